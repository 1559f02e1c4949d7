//! Map keys, values and limits shared by the eBPF programs and the user-space loader.
//!
//! Every type is `#[repr(C)]`, padding-free and `Copy`, because the kernel copies map entries
//! byte for byte between the two sides.
#![no_std]

/// Bound on the per-source LRU maps: memory stays fixed however many hosts send.
pub const MAX_SOURCES: u32 = 65_536;
/// Bound on configured destination ports.
pub const MAX_PORTS: u32 = 64;
/// Words of the destination-port bitmap `SL_PORTS` (65 536 bits).
pub const PORT_WORDS: u32 = 65_536 / 64;
/// Bound on allowlist prefixes per address family.
pub const MAX_ALLOW_PREFIXES: u32 = 16_384;
/// Bound on CPUs the CPUMAP redirect may target.
pub const MAX_CPUS: u32 = 256;
/// Sockets per steered port (one reader per core, so this bounds the core count we steer to).
pub const MAX_SOCKETS_PER_PORT: u32 = 256;
/// Ports that may be steered; the socket array holds `MAX_STEERED_PORTS * MAX_SOCKETS_PER_PORT`.
pub const MAX_STEERED_PORTS: u32 = 8;

/// Map names (≤ 15 bytes, the kernel's object-name limit). The loader pins them under these names.
pub const MAP_SETTINGS: &str = "SL_SETTINGS";
pub const MAP_PORTS: &str = "SL_PORTS";
pub const MAP_ALLOW_V4: &str = "SL_ALLOW_V4";
pub const MAP_ALLOW_V6: &str = "SL_ALLOW_V6";
pub const MAP_SOURCES: &str = "SL_SOURCES";
pub const MAP_BUCKETS: &str = "SL_BUCKETS";
pub const MAP_TOTALS: &str = "SL_TOTALS";
pub const MAP_CPUS: &str = "SL_CPUS";
pub const MAP_SOCKETS: &str = "SL_SOCKETS";
pub const MAP_STEER_PORTS: &str = "SL_STEER_PORTS";
pub const MAP_STEER_CPU: &str = "SL_STEER_CPU";

/// Program names (≤ 15 bytes), also used to recognise our own stale attachments.
pub const PROG_XDP: &str = "sluice_xdp";
pub const PROG_REUSEPORT: &str = "sluice_steer";

/// What the XDP program did with a packet to a configured port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Action {
    Pass = 0,
    DropAllowlist = 1,
    DropRateLimit = 2,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pass, Action::DropAllowlist, Action::DropRateLimit];
    pub const fn label(self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::DropAllowlist => "drop_allowlist",
            Action::DropRateLimit => "drop_ratelimit",
        }
    }
}

/// Transport protocol of a counted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Proto {
    Udp = 0,
    Tcp = 1,
}

impl Proto {
    pub const ALL: [Proto; 2] = [Proto::Udp, Proto::Tcp];
    pub const fn label(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// Number of slots in the totals array: one per (action, proto).
pub const TOTALS_SLOTS: u32 = 6;

/// Index into the totals array.
#[inline(always)]
pub const fn totals_index(action: Action, proto: Proto) -> u32 {
    action as u32 * 2 + proto as u32
}

/// Global settings, element 0 of `SL_SETTINGS`. Written by the loader before attaching.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XdpSettings {
    /// Non-zero: drop sources not matched by the allowlist tries.
    pub enforce_allowlist: u32,
    /// Number of CPUs in `SL_CPUS` to spread accepted UDP over; 0 disables the redirect.
    pub redirect_cpus: u32,
    /// GCRA emission interval (1e9 / packets-per-second); 0 disables rate limiting.
    pub rate_interval_ns: u64,
    /// GCRA burst tolerance: how far ahead of schedule a source may run, in ns.
    pub rate_burst_ns: u64,
}

/// Counters of one source, one copy per CPU (per-CPU LRU map): no atomics on the hot path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SourceCounters {
    /// Packets to configured ports, whatever their fate.
    pub packets: u64,
    /// IP bytes (IP header + payload) of those packets.
    pub bytes: u64,
    /// Packets dropped because the source is not allowlisted.
    pub dropped_allowlist: u64,
    /// Packets dropped by the per-source rate limit.
    pub dropped_ratelimit: u64,
}

/// Packet and byte totals for one (action, proto) slot, per CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
}

/// Key of the per-source maps: the source address as IPv6, IPv4 mapped as `::ffff:a.b.c.d`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct SourceKey {
    pub addr: [u8; 16],
}

/// Steering of one port's reuseport group, value of `SL_STEER_PORTS` keyed by the local port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SteerPort {
    /// Which block of `MAX_SOCKETS_PER_PORT` entries in `SL_SOCKETS` belongs to this port.
    pub slot: u32,
    /// Sockets filled in that block (indexes `0..count`).
    pub count: u32,
    /// `STEER_*` mode.
    pub mode: u32,
    pub _reserved: u32,
}

pub const STEER_OFF: u32 = 0;
pub const STEER_CPU: u32 = 1;
pub const STEER_RANDOM: u32 = 2;
pub const STEER_HASH: u32 = 3;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and have no padding
    // (checked by the size assertions below), so any byte pattern is a valid value.
    unsafe impl aya::Pod for super::XdpSettings {}
    unsafe impl aya::Pod for super::SourceCounters {}
    unsafe impl aya::Pod for super::Totals {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::SteerPort {}
}

const _: () = {
    assert!(core::mem::size_of::<XdpSettings>() == 24);
    assert!(core::mem::size_of::<SourceCounters>() == 32);
    assert!(core::mem::size_of::<Totals>() == 16);
    assert!(core::mem::size_of::<SourceKey>() == 16);
    assert!(core::mem::size_of::<SteerPort>() == 16);
};
