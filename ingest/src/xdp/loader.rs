//! Loading, attaching, pinning and tearing down the eBPF programs (aya 0.14).

use std::{
    collections::HashMap,
    fs::File,
    net::IpAddr,
    os::fd::{AsRawFd, BorrowedFd, RawFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, CpuMap, HashMap as BpfHashMap, LpmTrie, MapData, ReusePortSockArray, lpm_trie::Key,
    },
    programs::{
        SkReuseport, Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, PinnedLink},
    },
};
use sluice_ingest_ebpf::{
    MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_CPUS, MAP_PORTS, MAP_SETTINGS, MAP_SOCKETS, MAP_STEER_CPU,
    MAP_STEER_PORTS, MAX_ALLOW_PREFIXES, MAX_CPUS, MAX_SOCKETS_PER_PORT, MAX_STEERED_PORTS,
    PORT_WORDS, PROG_REUSEPORT, PROG_XDP, STEER_CPU, STEER_HASH, STEER_RANDOM, SteerPort,
    XdpSettings,
};

use super::{
    Cidr, Steering, XdpConfig, XdpError, XdpMode,
    stats::{self, XdpStats},
};

/// The object built from `ingest-ebpf` by `build.rs`. The ELF parser reads its headers in place,
/// so the embedded bytes must be aligned like the largest header field.
#[cfg(feature = "xdp")]
#[repr(C, align(32))]
struct Aligned<Bytes: ?Sized> {
    bytes: Bytes,
}
#[cfg(feature = "xdp")]
static OBJECT: &Aligned<[u8]> = &Aligned {
    bytes: *include_bytes!(env!("SLUICE_XDP_OBJECT")),
};

#[cfg(feature = "xdp")]
fn embedded_object() -> Result<&'static [u8], XdpError> {
    Ok(&OBJECT.bytes)
}

#[cfg(not(feature = "xdp"))]
fn embedded_object() -> Result<&'static [u8], XdpError> {
    Err(XdpError::NotEmbedded)
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS_ROOT: &str = "/sys/fs/bpf";
const LINK_PIN_PREFIX: &str = "link_";

/// Running XDP state. Dropping it detaches the programs and removes every pin.
pub struct XdpHandle {
    ebpf: Ebpf,
    /// As started, with the filters of the last reload.
    config: XdpConfig,
    /// CPUs the CPUMAP redirect spreads over (0: off); kept in the settings a reload writes.
    redirect_cpus: u32,
    pin_dir: PathBuf,
    links: Vec<AttachedLink>,
    steered_ports: HashMap<u16, u32>,
    _lock: File,
}

struct AttachedLink {
    interface: String,
    mode: &'static str,
    /// bpf_link pinned on bpffs: survives a SIGKILL so the next start can find and remove it.
    link: PinnedLink,
}

impl std::fmt::Debug for XdpHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpHandle")
            .field("pin_dir", &self.pin_dir)
            .field(
                "interfaces",
                &self
                    .links
                    .iter()
                    .map(|l| (&l.interface, l.mode))
                    .collect::<Vec<_>>(),
            )
            .field("steered_ports", &self.steered_ports)
            .finish()
    }
}

/// [`start`], but a missing privilege is not fatal: logs loudly, sets `sluice_xdp_enabled 0`
/// and returns `Ok(None)` so the daemon runs on plain sockets.
pub fn start_or_disable(config: &XdpConfig) -> Result<Option<XdpHandle>, XdpError> {
    match start(config) {
        Ok(handle) => {
            metrics::gauge!("sluice_xdp_enabled").set(1.0);
            Ok(Some(handle))
        }
        Err(XdpError::PermissionDenied) => {
            tracing::error!(
                "XDP DISABLED: {}; no in-kernel counting, allowlist, rate limit or steering",
                XdpError::PermissionDenied
            );
            stats::export_disabled_metric();
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Loads and attaches the programs described by `config`.
pub fn start(config: &XdpConfig) -> Result<XdpHandle, XdpError> {
    let object = embedded_object()?;
    let cidrs = config.validate()?;
    if !has_xdp_capabilities() {
        return Err(XdpError::PermissionDenied);
    }
    let pin_dir = config.pin_path.clone();
    ensure_bpffs(&pin_dir)?;
    let lock = lock_pin_dir(&pin_dir)?;
    remove_stale_pins(&pin_dir)?;
    std::fs::create_dir_all(&pin_dir).map_err(|source| XdpError::Io {
        context: format!("creating {}", pin_dir.display()),
        source,
    })?;

    let mut ebpf = EbpfLoader::new().load(object).map_err(|error| {
        if is_permission_error(&error) {
            XdpError::PermissionDenied
        } else {
            XdpError::Load(error)
        }
    })?;
    let redirect_cpus = fill_config_maps(&mut ebpf, config, &cidrs)?;
    tracing::info!(
        ports = ?config.ports,
        allow_prefixes = cidrs.len(),
        enforce = config.enforce_allowlist,
        rate_limit_pps = ?config.rate_limit_pps,
        redirect_cpus,
        "XDP maps configured"
    );

    for (name, map) in ebpf.maps() {
        map.pin(pin_dir.join(name)).map_err(|e| XdpError::Map {
            name: "pin",
            reason: format!("{name}: {e}"),
        })?;
    }

    let mut handle = XdpHandle {
        ebpf,
        config: config.clone(),
        redirect_cpus,
        pin_dir,
        links: Vec::new(),
        steered_ports: HashMap::new(),
        _lock: lock,
    };

    let xdp: &mut Xdp = program(&mut handle.ebpf, PROG_XDP)?;
    xdp.load().map_err(|source| XdpError::Program {
        name: PROG_XDP,
        source,
    })?;
    for interface in &config.interfaces {
        let attached = attach_xdp(
            xdp,
            interface,
            config.mode,
            config.cpu_redirect,
            &handle.pin_dir,
        )?;
        tracing::info!(interface, mode = attached.mode, "XDP attached");
        handle.links.push(attached);
    }
    if config.steering != Steering::Off {
        let steer: &mut SkReuseport = program(&mut handle.ebpf, PROG_REUSEPORT)?;
        steer.load().map_err(|source| XdpError::Program {
            name: PROG_REUSEPORT,
            source,
        })?;
    }
    Ok(handle)
}

impl XdpHandle {
    /// Where the maps (and links) of this instance are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// `(interface, "driver" | "generic")` for every attachment.
    pub fn attachments(&self) -> Vec<(String, &'static str)> {
        self.links
            .iter()
            .map(|l| (l.interface.clone(), l.mode))
            .collect()
    }

    /// Steers datagrams to `port` over `sockets` (one reader socket per core, all bound to
    /// `port` with SO_REUSEPORT), as configured by `steering`. A no-op when steering is off.
    /// The program stays attached to the reuseport group as long as its sockets live.
    pub fn attach_reuseport(
        &mut self,
        port: u16,
        sockets: &[(usize, RawFd)],
    ) -> Result<(), XdpError> {
        let mode = match self.config.steering {
            Steering::Off => return Ok(()),
            Steering::Cpu => STEER_CPU,
            Steering::Random => STEER_RANDOM,
            Steering::Hash => STEER_HASH,
        };
        if sockets.is_empty() || sockets.len() > MAX_SOCKETS_PER_PORT as usize {
            return Err(XdpError::Steering(format!(
                "port {port}: {} sockets (need 1..={MAX_SOCKETS_PER_PORT})",
                sockets.len()
            )));
        }
        let slot = match self.steered_ports.get(&port) {
            Some(slot) => *slot,
            None => {
                let used: Vec<u32> = self.steered_ports.values().copied().collect();
                (0..MAX_STEERED_PORTS)
                    .find(|s| !used.contains(s))
                    .ok_or_else(|| {
                        XdpError::Steering(format!("at most {MAX_STEERED_PORTS} steered ports"))
                    })?
            }
        };
        {
            let mut array: ReusePortSockArray<&mut MapData> = map_mut(&mut self.ebpf, MAP_SOCKETS)?;
            for (index, (_, fd)) in sockets.iter().enumerate() {
                array
                    .set(slot * MAX_SOCKETS_PER_PORT + index as u32, fd, 0)
                    .map_err(|e| XdpError::Steering(format!("port {port} socket {fd}: {e}")))?;
            }
        }
        {
            let mut cpu_index: Array<&mut MapData, u32> = map_mut(&mut self.ebpf, MAP_STEER_CPU)?;
            for cpu in 0..MAX_CPUS {
                let own = sockets
                    .iter()
                    .position(|(c, _)| *c == cpu as usize)
                    .map_or(0, |i| i as u32 + 1);
                cpu_index
                    .set(slot * MAX_CPUS + cpu, own, 0)
                    .map_err(|e| XdpError::Map {
                        name: "SL_STEER_CPU",
                        reason: e.to_string(),
                    })?;
            }
        }
        {
            let mut ports: BpfHashMap<&mut MapData, u16, SteerPort> =
                map_mut(&mut self.ebpf, MAP_STEER_PORTS)?;
            let value = SteerPort {
                slot,
                count: sockets.len() as u32,
                mode,
                _reserved: 0,
            };
            ports.insert(port, value, 0).map_err(|e| XdpError::Map {
                name: "SL_STEER_PORTS",
                reason: e.to_string(),
            })?;
        }
        let steer: &mut SkReuseport = program(&mut self.ebpf, PROG_REUSEPORT)?;
        // SAFETY: the caller passes fds of live sockets it owns; the borrow ends with this call.
        let first = unsafe { BorrowedFd::borrow_raw(sockets[0].1) };
        steer.attach(first).map_err(|e| {
            XdpError::Steering(format!("attaching to port {port}'s reuseport group: {e}"))
        })?;
        self.steered_ports.insert(port, slot);
        tracing::info!(port, sockets = sockets.len(), steering = ?self.config.steering, "socket steering attached");
        Ok(())
    }

    /// Runs and total run time of the XDP program since it was loaded, as counted by the kernel
    /// while BPF run-time statistics are enabled (`aya::sys::enable_stats`, off by default as it
    /// costs two clock reads per run): the program's own cost, without the hook around it.
    pub fn xdp_program_run_stats(&self) -> Result<(u64, std::time::Duration), XdpError> {
        let program = self.ebpf.program(PROG_XDP).ok_or(XdpError::Program {
            name: PROG_XDP,
            source: aya::programs::ProgramError::NotLoaded,
        })?;
        let info = program.info().map_err(|source| XdpError::Program {
            name: PROG_XDP,
            source,
        })?;
        Ok((info.run_count(), info.run_time()))
    }

    /// Current counters, summed over CPUs; sources sorted busiest first.
    pub fn stats(&self) -> Result<XdpStats, XdpError> {
        stats::read(&self.ebpf)
    }

    /// Puts `config`'s allowlist, its enforcement and the rate limit in place (a config
    /// reload); the rest of `config` needs a restart and is not looked at. Returns whether
    /// anything changed. Per-source rate-limit state is kept: a sender keeps its place in its
    /// bucket under the new rate.
    pub fn update_filters(&mut self, config: &XdpConfig) -> Result<bool, XdpError> {
        let unchanged = self.config.allow == config.allow
            && self.config.enforce_allowlist == config.enforce_allowlist
            && self.config.rate_limit_pps == config.rate_limit_pps
            && self.config.rate_limit_burst == config.rate_limit_burst;
        if unchanged {
            return Ok(false);
        }
        let cidrs = config.validate()?;
        // Enforcement may only go on once the new prefixes are in, and stale prefixes only
        // leave once enforcement is off, if it goes off: a sender allowed before and after the
        // reload is never dropped in between. (Within one trie, `sync_allow_tries` adds before
        // it removes.)
        let settings = settings(config, self.redirect_cpus);
        if config.enforce_allowlist {
            sync_allow_tries(&mut self.ebpf, &cidrs)?;
            write_settings(&mut self.ebpf, &settings)?;
        } else {
            write_settings(&mut self.ebpf, &settings)?;
            sync_allow_tries(&mut self.ebpf, &cidrs)?;
        }
        self.config.allow = config.allow.clone();
        self.config.enforce_allowlist = config.enforce_allowlist;
        self.config.rate_limit_pps = config.rate_limit_pps;
        self.config.rate_limit_burst = config.rate_limit_burst;
        tracing::info!(
            allow_prefixes = cidrs.len(),
            enforce = config.enforce_allowlist,
            rate_limit_pps = ?config.rate_limit_pps,
            "XDP filters reloaded"
        );
        Ok(true)
    }

    /// Reads the maps and updates the `sluice_xdp_*` metrics (call periodically).
    pub fn export_metrics(&self) -> Result<XdpStats, XdpError> {
        let stats = self.stats()?;
        stats::export(&stats, self.config.metrics_top_sources);
        Ok(stats)
    }
}

impl Drop for XdpHandle {
    fn drop(&mut self) {
        for attached in self.links.drain(..) {
            match attached.link.unpin() {
                // Dropping the last link fd detaches the program.
                Ok(link) => drop(link),
                Err(e) => tracing::warn!(interface = attached.interface, "unpinning XDP link: {e}"),
            }
            tracing::info!(interface = attached.interface, "XDP detached");
        }
        if let Err(e) = remove_pins(&self.pin_dir) {
            tracing::warn!(dir = %self.pin_dir.display(), "removing XDP pins: {e}");
        }
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, XdpError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(XdpError::Program {
        name,
        source: aya::programs::ProgramError::NotLoaded,
    })?;
    program
        .try_into()
        .map_err(|source| XdpError::Program { name, source })
}

fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, XdpError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(XdpError::Map {
        name,
        reason: "missing from object".into(),
    })?;
    T::try_from(map).map_err(|e| XdpError::Map {
        name,
        reason: e.to_string(),
    })
}

fn fill_config_maps(ebpf: &mut Ebpf, config: &XdpConfig, cidrs: &[Cidr]) -> Result<u32, XdpError> {
    let map_err = |name: &'static str| {
        move |e: aya::maps::MapError| XdpError::Map {
            name,
            reason: e.to_string(),
        }
    };

    {
        let mut words = vec![0u64; PORT_WORDS as usize];
        for port in &config.ports {
            words[usize::from(*port >> 6)] |= 1u64 << (*port & 63);
        }
        let mut ports: Array<&mut MapData, u64> = map_mut(ebpf, MAP_PORTS)?;
        for (index, word) in words.iter().enumerate().filter(|(_, w)| **w != 0) {
            ports
                .set(index as u32, *word, 0)
                .map_err(map_err(MAP_PORTS))?;
        }
    }
    sync_allow_tries(ebpf, cidrs)?;

    let mut redirect_cpus = 0;
    if config.cpu_redirect {
        let online = aya::util::online_cpus().map_err(|(what, e)| XdpError::Io {
            context: format!("reading {what}"),
            source: e,
        })?;
        let mut cpus: CpuMap<&mut MapData> = map_mut(ebpf, MAP_CPUS)?;
        for cpu in online.iter().copied().filter(|cpu| *cpu < MAX_CPUS) {
            cpus.set(cpu, config.cpu_redirect_queue, None, 0)
                .map_err(|e| XdpError::Map {
                    name: MAP_CPUS,
                    reason: e.to_string(),
                })?;
            redirect_cpus = redirect_cpus.max(cpu + 1);
        }
    }

    write_settings(ebpf, &settings(config, redirect_cpus))?;
    Ok(redirect_cpus)
}

/// What the program reads from `SL_SETTINGS` for `config`.
fn settings(config: &XdpConfig, redirect_cpus: u32) -> XdpSettings {
    let (rate_interval_ns, rate_burst_ns) = match config.rate_limit_pps {
        Some(pps) => {
            let interval = (1_000_000_000 / pps).max(1);
            let burst = config.rate_limit_burst.unwrap_or((pps / 10).max(1));
            // The first packet of a burst is the one scheduled "now", hence burst - 1.
            (interval, interval.saturating_mul(burst.saturating_sub(1)))
        }
        None => (0, 0),
    };
    XdpSettings {
        enforce_allowlist: u32::from(config.enforce_allowlist),
        redirect_cpus,
        rate_interval_ns,
        rate_burst_ns,
    }
}

fn write_settings(ebpf: &mut Ebpf, settings: &XdpSettings) -> Result<(), XdpError> {
    let mut settings_map: Array<&mut MapData, XdpSettings> = map_mut(ebpf, MAP_SETTINGS)?;
    settings_map
        .set(0, *settings, 0)
        .map_err(|e| XdpError::Map {
            name: MAP_SETTINGS,
            reason: e.to_string(),
        })
}

/// Makes the allowlist tries hold exactly `cidrs`, as one family's trie at a time: prefixes
/// to add go in before stale ones leave, so a sender in both the old and the new list is never
/// dropped in between (unless both together would pass the trie's capacity).
fn sync_allow_tries(ebpf: &mut Ebpf, cidrs: &[Cidr]) -> Result<(), XdpError> {
    let v4: Vec<Key<[u8; 4]>> = cidrs
        .iter()
        .filter_map(|c| match c.addr {
            IpAddr::V4(v4) => Some(Key::new(u32::from(c.prefix), v4.octets())),
            IpAddr::V6(_) => None,
        })
        .collect();
    // IPv4 senders reaching a dual-stack socket keep their IPv4 source on the wire, so only
    // the v4 trie is consulted for them; nothing to mirror in the v6 trie.
    let v6: Vec<Key<[u8; 16]>> = cidrs
        .iter()
        .filter_map(|c| match c.addr {
            IpAddr::V6(v6) => Some(Key::new(u32::from(c.prefix), v6.octets())),
            IpAddr::V4(_) => None,
        })
        .collect();
    sync_trie(&mut map_mut(ebpf, MAP_ALLOW_V4)?, MAP_ALLOW_V4, &v4)?;
    sync_trie(&mut map_mut(ebpf, MAP_ALLOW_V6)?, MAP_ALLOW_V6, &v6)
}

fn sync_trie<const N: usize>(
    trie: &mut LpmTrie<&mut MapData, [u8; N], u8>,
    name: &'static str,
    wanted: &[Key<[u8; N]>],
) -> Result<(), XdpError> {
    let map_err = |e: aya::maps::MapError| XdpError::Map {
        name,
        reason: e.to_string(),
    };
    let same = |a: &Key<[u8; N]>, b: &Key<[u8; N]>| {
        a.prefix_len() == b.prefix_len() && a.data() == b.data()
    };
    let present: Vec<Key<[u8; N]>> = trie.keys().collect::<Result<_, _>>().map_err(map_err)?;
    let stale: Vec<&Key<[u8; N]>> = present
        .iter()
        .filter(|p| !wanted.iter().any(|w| same(p, w)))
        .collect();
    let missing = wanted
        .iter()
        .filter(|w| !present.iter().any(|p| same(p, w)))
        .count();
    let room_for_both = present.len() + missing <= MAX_ALLOW_PREFIXES as usize;
    if !room_for_both {
        for key in &stale {
            trie.remove(key).map_err(map_err)?;
        }
    }
    for key in wanted {
        trie.insert(key, 1, 0).map_err(map_err)?;
    }
    if room_for_both {
        for key in &stale {
            trie.remove(key).map_err(map_err)?;
        }
    }
    Ok(())
}

fn attach_xdp(
    xdp: &mut Xdp,
    interface: &str,
    mode: XdpMode,
    cpu_redirect: bool,
    pin_dir: &Path,
) -> Result<AttachedLink, XdpError> {
    let attempts: &[(AyaXdpMode, &'static str)] = match mode {
        // A local sender on the other end of a veth leaves the UDP checksum to offload
        // (CHECKSUM_PARTIAL). Native XDP turns the skb into a bare frame; a CPUMAP redirect
        // rebuilds an skb without that state, and the UDP stack then drops every datagram
        // as a checksum error. Generic mode redirects the skb itself. Physical NICs deliver
        // complete checksums, so they keep driver mode (docs/xdp.md).
        XdpMode::Auto if cpu_redirect && driver_name(interface).as_deref() == Some("veth") => {
            &[(AyaXdpMode::Skb, "generic"), (AyaXdpMode::Driver, "driver")]
        }
        XdpMode::Auto => &[(AyaXdpMode::Driver, "driver"), (AyaXdpMode::Skb, "generic")],
        XdpMode::Driver => &[(AyaXdpMode::Driver, "driver")],
        XdpMode::Generic => &[(AyaXdpMode::Skb, "generic")],
    };
    let mut failures = Vec::new();
    for (aya_mode, label) in attempts {
        match xdp.attach(interface, *aya_mode) {
            Ok(id) => {
                let link = xdp.take_link(id).map_err(|e| XdpError::Attach {
                    interface: interface.to_string(),
                    reason: e.to_string(),
                })?;
                // Only bpf_link attachments (Linux ≥ 5.9) can be pinned; the legacy netlink path
                // could not be told apart from a foreign program after a crash, so refuse it
                // (the failed conversion drops, and so detaches, the netlink attachment).
                let fd_link = FdLink::try_from(link).map_err(|e| XdpError::Attach {
                    interface: interface.to_string(),
                    reason: format!(
                        "kernel attached XDP without bpf_link ({e}); Linux ≥ 5.9 needed"
                    ),
                })?;
                let path = pin_dir.join(format!("{LINK_PIN_PREFIX}{interface}"));
                let link = fd_link.pin(&path).map_err(|e| XdpError::Attach {
                    interface: interface.to_string(),
                    reason: format!("pinning link at {}: {e}", path.display()),
                })?;
                return Ok(AttachedLink {
                    interface: interface.to_string(),
                    mode: label,
                    link,
                });
            }
            Err(e) => failures.push(format!("{label}: {e}")),
        }
    }
    Err(XdpError::Attach {
        interface: interface.to_string(),
        reason: failures.join("; "),
    })
}

/// The kernel driver behind `interface` (ethtool's `driver:`), in the calling thread's network
/// namespace; `None` when the interface is unknown or the driver does not say.
fn driver_name(interface: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 3;
    #[repr(C)]
    struct DriverInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved: [u8; 12],
        counts: [u32; 5],
    }
    /// `struct ifreq` with the `ifr_data` member of its union (40 bytes on 64-bit Linux).
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DriverInfo,
        _union_rest: [u8; 16],
    }
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return None;
    }
    let mut info = DriverInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved: [0; 12],
        counts: [0; 5],
    };
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _union_rest: [0; 16],
    };
    request.name[..name.len()].copy_from_slice(name);
    // SAFETY: a plain socket syscall; the returned fd is owned and closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCETHTOOL reads the NUL-terminated name and `ifr_data` from `request`, and
    // ETHTOOL_GDRVINFO writes at most size_of::<DriverInfo>() bytes through that pointer,
    // which points at `info`, alive and exclusively borrowed for the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL as _, &mut request) };
    // SAFETY: `fd` is the socket opened above, not used afterwards.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// CapEff must hold CAP_NET_ADMIN and CAP_BPF (or CAP_SYS_ADMIN, which implies it).
fn has_xdp_capabilities() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(caps) = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return false;
    };
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))
}

fn is_permission_error(error: &aya::EbpfError) -> bool {
    let text = format!("{error:?}");
    text.contains("PermissionDenied") || text.contains("Operation not permitted")
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut fs: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut fs) == 0 && fs.f_type as i64 == BPF_FS_MAGIC
    }
}

/// The pin directory's parent must be on bpffs; `/sys/fs/bpf` is mounted when it is not yet.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), XdpError> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if is_bpffs(parent) {
        return Ok(());
    }
    let err = |reason: String| XdpError::Bpffs {
        path: parent.to_path_buf(),
        reason,
    };
    if parent != Path::new(BPFFS_ROOT) {
        return Err(err(
            "not a bpf filesystem (pin_path must be inside a mounted bpffs)".into(),
        ));
    }
    std::fs::create_dir_all(parent).map_err(|e| err(format!("creating mount point: {e}")))?;
    let target = std::ffi::CString::new(BPFFS_ROOT).expect("no NUL");
    // SAFETY: all arguments are valid NUL-terminated strings; data may be null for bpffs.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(format!(
            "mount -t bpf failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    tracing::info!("mounted bpffs at {BPFFS_ROOT}");
    Ok(())
}

/// One daemon per pin directory: an flock (released by the kernel even on SIGKILL) tells a live
/// owner from leftovers of a dead one.
fn lock_pin_dir(pin_dir: &Path) -> Result<File, XdpError> {
    let name: String = pin_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let dir = if Path::new("/run").is_dir() {
        PathBuf::from("/run")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("sluice-xdp{name}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| XdpError::Io {
            context: format!("opening lock {}", path.display()),
            source,
        })?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(XdpError::InUse(pin_dir.to_path_buf()));
    }
    Ok(file)
}

fn remove_stale_pins(pin_dir: &Path) -> Result<(), XdpError> {
    if !pin_dir.exists() {
        return Ok(());
    }
    let mut links = 0;
    let entries = std::fs::read_dir(pin_dir).map_err(|source| XdpError::Io {
        context: format!("reading {}", pin_dir.display()),
        source,
    })?;
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(LINK_PIN_PREFIX)
        {
            match PinnedLink::from_pin(entry.path()).map(PinnedLink::unpin) {
                Ok(Ok(link)) => {
                    drop(link);
                    links += 1;
                }
                Ok(Err(e)) => {
                    tracing::warn!(pin = %entry.path().display(), "unpinning stale link: {e}")
                }
                Err(e) => tracing::warn!(pin = %entry.path().display(), "opening stale link: {e}"),
            }
        }
    }
    remove_pins(pin_dir).map_err(|source| XdpError::Io {
        context: format!("removing stale pins in {}", pin_dir.display()),
        source,
    })?;
    tracing::warn!(dir = %pin_dir.display(), stale_links = links, "removed pins left by an earlier run");
    Ok(())
}

fn remove_pins(pin_dir: &Path) -> std::io::Result<()> {
    if !pin_dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(pin_dir)? {
        std::fs::remove_file(entry?.path())?;
    }
    std::fs::remove_dir(pin_dir)
}

#[cfg(test)]
mod tests {
    use super::driver_name;

    #[test]
    fn driver_name_is_none_for_unknown_or_invalid_interfaces() {
        assert_eq!(driver_name("sluicenoif0"), None);
        assert_eq!(driver_name(""), None);
        assert_eq!(driver_name("a-name-longer-than-ifnamsiz"), None);
        assert_eq!(driver_name("bad\0name"), None);
    }
}
