//! Sluice's in-kernel half: an XDP program that counts, allowlists, rate-limits and spreads
//! syslog traffic before the kernel builds a socket buffer for it, and an SK_REUSEPORT program
//! that spreads one sender's datagrams over every worker socket.
//!
//! Every packet access is bounds-checked against `data_end` right before it, which is what the
//! verifier needs to accept variable offsets (IPv4 options, VLAN tags).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        sk_action::SK_PASS,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::{bpf_get_prandom_u32, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{map, sk_reuseport, xdp},
    maps::{
        Array, CpuMap, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray,
        ReusePortSockArray, lpm_trie::Key,
    },
    programs::{SkReuseportContext, XdpContext},
};
use sluice_ingest_ebpf::{
    Action, MAX_ALLOW_PREFIXES, MAX_CPUS, MAX_SOCKETS_PER_PORT, MAX_SOURCES, MAX_STEERED_PORTS,
    PORT_WORDS, Proto, STEER_CPU, STEER_HASH, STEER_RANDOM, SourceCounters, SourceKey, SteerPort,
    TOTALS_SLOTS, Totals, XdpSettings, totals_index,
};

#[map]
static SL_SETTINGS: Array<XdpSettings> = Array::with_max_entries(1, 0);
/// Bitmap of configured destination ports (bit `port % 64` of word `port / 64`): an array
/// lookup the verifier inlines, cheaper than hashing the port on every packet.
#[map]
static SL_PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);
#[map]
static SL_ALLOW_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_ALLOW_PREFIXES, 0);
#[map]
static SL_ALLOW_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_ALLOW_PREFIXES, 0);
#[map]
static SL_SOURCES: LruPerCpuHashMap<SourceKey, SourceCounters> =
    LruPerCpuHashMap::with_max_entries(MAX_SOURCES, 0);
/// GCRA "theoretical arrival time" per source; shared across CPUs so the limit is per source,
/// not per source per CPU.
#[map]
static SL_BUCKETS: LruHashMap<SourceKey, u64> = LruHashMap::with_max_entries(MAX_SOURCES, 0);
#[map]
static SL_TOTALS: PerCpuArray<Totals> = PerCpuArray::with_max_entries(TOTALS_SLOTS, 0);
#[map]
static SL_CPUS: CpuMap = CpuMap::with_max_entries(MAX_CPUS, 0);
#[map]
static SL_SOCKETS: ReusePortSockArray =
    ReusePortSockArray::with_max_entries(MAX_STEERED_PORTS * MAX_SOCKETS_PER_PORT, 0);
#[map]
static SL_STEER_PORTS: HashMap<u16, SteerPort> = HashMap::with_max_entries(MAX_STEERED_PORTS, 0);
/// `slot * MAX_CPUS + cpu` → socket index + 1 (0: that CPU has no socket of its own).
#[map]
static SL_STEER_CPU: Array<u32> = Array::with_max_entries(MAX_STEERED_PORTS * MAX_CPUS, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[inline(always)]
fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return None;
    }
    // SAFETY: the range [start + offset, start + offset + N) was just checked to lie inside
    // the packet, and `[u8; N]` has no alignment requirement.
    Some(unsafe { *((start + offset) as *const [u8; N]) })
}

#[inline(always)]
fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    bytes_at::<2>(ctx, offset).map(u16::from_be_bytes)
}

struct Packet {
    source: SourceKey,
    is_v4: bool,
    proto: Proto,
    ip_len: u64,
}

/// `Some` for UDP and TCP packets to one of the configured ports. Checked
/// before the source address is copied, so other traffic costs only the parse and one bit test.
#[inline(always)]
fn configured_port(ctx: &XdpContext, ip_proto: u8, l4_offset: usize) -> Option<()> {
    if ip_proto != IPPROTO_UDP && ip_proto != IPPROTO_TCP {
        return None;
    }
    let dport = be16_at(ctx, l4_offset + 2)?;
    let word = SL_PORTS.get(u32::from(dport >> 6)).copied().unwrap_or(0);
    if word & (1u64 << (dport & 63)) == 0 {
        return None;
    }
    Some(())
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Option<Packet> {
    let mut offset = ETH_HLEN;
    let mut ethertype = be16_at(ctx, 12)?;
    // Up to two tags (802.1ad outer + 802.1Q inner), unrolled for the verifier.
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16_at(ctx, offset + 2)?;
        offset += 4;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16_at(ctx, offset + 2)?;
        offset += 4;
    }

    let mut source = SourceKey::default();
    let (is_v4, ip_proto, ip_len) = if ethertype == ETH_P_IPV4 {
        let header = bytes_at::<20>(ctx, offset)?;
        let ihl = (header[0] & 0x0f) as usize;
        if ihl < 5 {
            return None;
        }
        // Only first fragments carry ports; later ones are left to the stack uncounted.
        let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
        if fragment_offset != 0 {
            return None;
        }
        let l4_offset = offset + ihl * 4;
        configured_port(ctx, header[9], l4_offset)?;
        source.addr[10] = 0xff;
        source.addr[11] = 0xff;
        source.addr[12] = header[12];
        source.addr[13] = header[13];
        source.addr[14] = header[14];
        source.addr[15] = header[15];
        let total_len = u16::from_be_bytes([header[2], header[3]]) as u64;
        (true, header[9], total_len)
    } else if ethertype == ETH_P_IPV6 {
        let header = bytes_at::<40>(ctx, offset)?;
        // Extension headers are not walked: such packets pass uncounted (documented).
        configured_port(ctx, header[6], offset + 40)?;
        let mut i = 0;
        while i < 16 {
            source.addr[i] = header[8 + i];
            i += 1;
        }
        let payload_len = u16::from_be_bytes([header[4], header[5]]) as u64;
        (false, header[6], payload_len + 40)
    } else {
        return None;
    };

    let proto = if ip_proto == IPPROTO_UDP {
        Proto::Udp
    } else {
        Proto::Tcp
    };
    Some(Packet {
        source,
        is_v4,
        proto,
        ip_len,
    })
}

#[inline(always)]
fn allowlisted(packet: &Packet) -> bool {
    if packet.is_v4 {
        let a = &packet.source.addr;
        SL_ALLOW_V4
            .get(Key::new(32, [a[12], a[13], a[14], a[15]]))
            .is_some()
    } else {
        SL_ALLOW_V6.get(Key::new(128, packet.source.addr)).is_some()
    }
}

/// Generic cell rate algorithm: one timestamp per source instead of a token count, so a single
/// compare-and-store decides. Updates from two CPUs may race; the worst case lets one extra
/// packet through, which is acceptable for a flood guard.
#[inline(always)]
fn within_rate(source: &SourceKey, settings: &XdpSettings) -> bool {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match SL_BUCKETS.get_ptr_mut(source) {
        Some(tat_ptr) => {
            // SAFETY: the kernel returned a valid pointer to this entry's u64 value.
            let tat = unsafe { *tat_ptr };
            if tat > now + settings.rate_burst_ns {
                return false;
            }
            let base = if tat > now { tat } else { now };
            // SAFETY: as above; a racing writer at worst overwrites with a similar timestamp.
            unsafe { *tat_ptr = base + settings.rate_interval_ns };
            true
        }
        None => {
            let _ = SL_BUCKETS.insert(source, now + settings.rate_interval_ns, 0);
            true
        }
    }
}

#[inline(always)]
fn count(packet: &Packet, action: Action) {
    match SL_SOURCES.get_ptr_mut(packet.source) {
        Some(counters) => {
            // SAFETY: per-CPU value of an existing entry: only this CPU writes it, and softirq
            // context does not re-enter the XDP program on the same CPU.
            let counters = unsafe { &mut *counters };
            counters.packets += 1;
            counters.bytes += packet.ip_len;
            match action {
                Action::Pass => {}
                Action::DropAllowlist => counters.dropped_allowlist += 1,
                Action::DropRateLimit => counters.dropped_ratelimit += 1,
            }
        }
        None => {
            let fresh = SourceCounters {
                packets: 1,
                bytes: packet.ip_len,
                dropped_allowlist: (action == Action::DropAllowlist) as u64,
                dropped_ratelimit: (action == Action::DropRateLimit) as u64,
            };
            let _ = SL_SOURCES.insert(packet.source, fresh, 0);
        }
    }
    if let Some(totals) = SL_TOTALS.get_ptr_mut(totals_index(action, packet.proto)) {
        // SAFETY: per-CPU array slot, written only from this CPU.
        let totals = unsafe { &mut *totals };
        totals.packets += 1;
        totals.bytes += packet.ip_len;
    }
}

#[xdp]
pub fn sluice_xdp(ctx: XdpContext) -> u32 {
    let Some(packet) = parse(&ctx) else {
        return XDP_PASS;
    };
    let Some(settings) = SL_SETTINGS.get(0) else {
        return XDP_PASS;
    };

    let action = if settings.enforce_allowlist != 0 && !allowlisted(&packet) {
        Action::DropAllowlist
    } else if settings.rate_interval_ns != 0 && !within_rate(&packet.source, settings) {
        Action::DropRateLimit
    } else {
        Action::Pass
    };
    count(&packet, action);

    match action {
        Action::DropAllowlist | Action::DropRateLimit => XDP_DROP,
        Action::Pass => {
            let cpus = settings.redirect_cpus;
            if packet.proto == Proto::Udp && cpus != 0 && cpus <= MAX_CPUS {
                // SAFETY: bpf_get_prandom_u32 has no preconditions.
                let cpu = unsafe { bpf_get_prandom_u32() } % cpus;
                // A missing CPU entry falls back to XDP_PASS (the low bits of the flags).
                SL_CPUS.redirect(cpu, XDP_PASS as u64).unwrap_or(XDP_PASS)
            } else {
                XDP_PASS
            }
        }
    }
}

#[sk_reuseport]
pub fn sluice_steer(ctx: SkReuseportContext) -> u32 {
    // SAFETY: `sk` in sk_reuseport_md is always a valid socket of the group (Linux ≥ 5.14);
    // the verifier types it PTR_TO_SOCKET and rejects the load on older kernels.
    let local_port = unsafe { (*(*ctx.md).__bindgen_anon_3.sk).src_port } as u16;
    let Some(steer) = (unsafe { HashMap::get(&SL_STEER_PORTS, local_port) }) else {
        return SK_PASS;
    };
    let count = steer.count;
    if count == 0 || count > MAX_SOCKETS_PER_PORT || steer.slot >= MAX_STEERED_PORTS {
        return SK_PASS;
    }
    let index = match steer.mode {
        STEER_CPU => {
            // SAFETY: bpf_get_smp_processor_id has no preconditions.
            let cpu = unsafe { bpf_get_smp_processor_id() };
            let own = if cpu < MAX_CPUS {
                SL_STEER_CPU
                    .get(steer.slot * MAX_CPUS + cpu)
                    .copied()
                    .unwrap_or(0)
            } else {
                0
            };
            if own != 0 && own <= count {
                own - 1
            } else {
                cpu % count
            }
        }
        // SAFETY: bpf_get_prandom_u32 has no preconditions.
        STEER_RANDOM => (unsafe { bpf_get_prandom_u32() }) % count,
        STEER_HASH => ctx.hash() % count,
        _ => return SK_PASS,
    };
    // On failure (socket closed meanwhile) SK_PASS without a selection lets the kernel fall
    // back to its flow hash instead of dropping.
    match SL_SOCKETS.select_reuseport(&ctx, steer.slot * MAX_SOCKETS_PER_PORT + index) {
        Ok(()) => SK_PASS,
        Err(_) => SK_PASS,
    }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path (it would be a
    // call to an undefined function), so this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}
