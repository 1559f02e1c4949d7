//! Admission and stall limits for stream sources (TCP and TLS, both backends), and the
//! source-address allowlist that UDP readers use too when XDP is off.
//!
//! One [`ConnectionGuard`] per source is shared by all its listener threads: admission happens
//! once per accepted connection (a short mutex, never on the message path), and the returned
//! [`Admission`] gives the slot back when the connection ends, whoever ends it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};

use crate::config::live::Live;
use crate::metrics::{CONNECTIONS_CLOSED, CONNECTIONS_REFUSED};

/// Source CIDRs allowed to send; empty means everyone. IPv4 is matched in its IPv4-mapped
/// IPv6 form so that one comparison covers dual-stack listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    /// (network, mask) as 128-bit IPv6 values.
    nets: Vec<(u128, u128)>,
}

fn as_v6_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6),
        },
    }
}

fn mask(prefix: u32) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    }
}

impl Allowlist {
    /// Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address; `Err` names the bad entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Allowlist, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in entries {
            let text = entry.as_ref().trim();
            let (addr, prefix) = match text.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (text, None),
            };
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("`{text}` is not an IPv4/IPv6 address or CIDR"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => p
                    .parse::<u32>()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| format!("`{text}`: prefix length must be 0..={max}"))?,
            };
            // IPv4 prefixes sit behind the 96-bit mapped prefix.
            let prefix = if ip.is_ipv4() { prefix + 96 } else { prefix };
            let m = mask(prefix);
            nets.push((as_v6_bits(ip) & m, m));
        }
        Ok(Allowlist { nets })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether a connection from `peer` may be taken: a sender of unknown address only when
    /// there is no list.
    pub fn permits_peer(&self, peer: Option<IpAddr>) -> bool {
        match peer {
            Some(ip) => self.permits(ip),
            None => self.is_empty(),
        }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.nets.is_empty() {
            return true;
        }
        let bits = as_v6_bits(ip);
        self.nets.iter().any(|(net, m)| bits & m == *net)
    }
}

/// A source's allowlist, replaceable while the source runs (`systemctl reload`). Readers keep
/// a copy ([`AllowlistView`]) and notice a new list by its generation number: one atomic load
/// per look, no lock on the datagram path.
pub type SharedAllowlist = Live<Allowlist>;

impl Live<Allowlist> {
    pub fn view(self: &Arc<Self>) -> AllowlistView {
        let (local, generation) = self.snapshot();
        AllowlistView {
            local,
            shared: self.clone(),
            generation,
        }
    }
}

/// One reader's copy of a [`SharedAllowlist`], brought up to date as it is used.
#[derive(Debug)]
pub struct AllowlistView {
    shared: Arc<SharedAllowlist>,
    local: Arc<Allowlist>,
    generation: u64,
}

impl AllowlistView {
    /// The list, when it changed since this view last looked (one atomic load otherwise):
    /// stream readers then close connections whose sender it no longer permits.
    #[inline]
    pub fn if_changed(&mut self) -> Option<&Allowlist> {
        if self.shared.generation() == self.generation {
            return None;
        }
        Some(self.current())
    }

    #[inline]
    pub fn current(&mut self) -> &Allowlist {
        if self.shared.generation() != self.generation {
            (self.local, self.generation) = self.shared.snapshot();
        }
        &self.local
    }
}

/// The limits of one stream source (see `docs/daemon.md`, "Connection limits").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections of the source at once, over all its listener threads.
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one /64) at once.
    pub max_connections_per_address: usize,
    /// A connection that completes no message for this long is closed; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Bytes a connection may send inside one unfinished message before it is closed.
    pub max_frame_backlog_bytes: usize,
}

impl ConnectionLimits {
    pub const UNLIMITED: ConnectionLimits = ConnectionLimits {
        max_connections: usize::MAX,
        max_connections_per_address: usize::MAX,
        idle_timeout: None,
        max_frame_backlog_bytes: usize::MAX,
    };
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotAllowed,
    MaxConnections,
    PerAddress,
    TlsHandshake,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not_allowed",
            Refusal::MaxConnections => "max_connections",
            Refusal::PerAddress => "per_address",
            Refusal::TlsHandshake => "tls_handshake",
        }
    }
}

/// Why the daemon closed a connection it had taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closure {
    Idle,
    FrameBacklog,
    /// A reload took the sender off the source's allowlist.
    NotAllowed,
}

impl Closure {
    pub fn label(self) -> &'static str {
        match self {
            Closure::Idle => "idle",
            Closure::FrameBacklog => "frame_backlog",
            Closure::NotAllowed => "not_allowed",
        }
    }

    /// Logs that `peer`'s connection was closed: at info when a reload took the sender off
    /// the allowlist (the operator's act, confirmed), at debug for a limit (counted; a flood
    /// of them must not flood the log).
    pub fn log(self, source: &str, peer: Option<SocketAddr>) {
        match self {
            Closure::NotAllowed => tracing::info!(
                source,
                ?peer,
                "connection closed: the reloaded allowlist no longer permits its sender"
            ),
            _ => tracing::debug!(
                source,
                ?peer,
                reason = self.label(),
                "connection closed by a limit"
            ),
        }
    }
}

struct GuardCounters {
    refused: [Counter; 4],
    closed: [Counter; 3],
    open: Gauge,
    accepted: Counter,
}

#[derive(Default)]
struct Occupancy {
    open: usize,
    per_address: HashMap<u128, usize>,
}

/// Admission control and limits of one stream source.
pub struct ConnectionGuard {
    allow: Arc<SharedAllowlist>,
    limits: ConnectionLimits,
    occupancy: Mutex<Occupancy>,
    counters: GuardCounters,
}

impl std::fmt::Debug for ConnectionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionGuard")
            .field("allow", &self.allow)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Clients are grouped per address, IPv6 per /64 (one host usually owns a whole /64).
fn address_key(ip: IpAddr) -> u128 {
    let bits = as_v6_bits(ip);
    if matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none()) {
        bits & mask(64)
    } else {
        bits
    }
}

impl ConnectionGuard {
    /// A guard whose refusals and closures are counted under `source`. It also keeps
    /// `sluice_tcp_connections_open` / `sluice_tcp_connections_total` for the source.
    pub fn new(source: &str, allow: Allowlist, limits: ConnectionLimits) -> Arc<Self> {
        let refused = |reason: Refusal| metrics::counter!(CONNECTIONS_REFUSED, "source" => source.to_string(), "reason" => reason.label());
        let closed = |reason: Closure| metrics::counter!(CONNECTIONS_CLOSED, "source" => source.to_string(), "reason" => reason.label());
        let counters = GuardCounters {
            refused: [
                refused(Refusal::NotAllowed),
                refused(Refusal::MaxConnections),
                refused(Refusal::PerAddress),
                refused(Refusal::TlsHandshake),
            ],
            closed: [
                closed(Closure::Idle),
                closed(Closure::FrameBacklog),
                closed(Closure::NotAllowed),
            ],
            open: metrics::gauge!(crate::metrics::TCP_CONNECTIONS_OPEN, "source" => source.to_string()),
            accepted: metrics::counter!(crate::metrics::TCP_CONNECTIONS, "source" => source.to_string()),
        };
        Arc::new(ConnectionGuard {
            allow: Arc::new(SharedAllowlist::new(allow)),
            limits,
            occupancy: Mutex::new(Occupancy::default()),
            counters,
        })
    }

    /// No allowlist, no limits, nothing counted (tests, tools, benches).
    pub fn unlimited() -> Arc<Self> {
        Arc::new(ConnectionGuard {
            allow: Arc::new(SharedAllowlist::new(Allowlist::default())),
            limits: ConnectionLimits::UNLIMITED,
            occupancy: Mutex::new(Occupancy::default()),
            counters: GuardCounters {
                refused: std::array::from_fn(|_| Counter::noop()),
                closed: std::array::from_fn(|_| Counter::noop()),
                open: Gauge::noop(),
                accepted: Counter::noop(),
            },
        })
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// A reader's copy of the allowlist, which follows [`ConnectionGuard::set_allowlist`].
    pub fn allowlist(&self) -> AllowlistView {
        self.allow.view()
    }

    /// Replaces the allowlist (config reload): new connections and datagrams are checked
    /// against it, and the stream readers close established connections it no longer
    /// permits (counted as `closed{reason="not_allowed"}`). False when nothing changed.
    pub fn set_allowlist(&self, allow: Allowlist) -> bool {
        self.allow.replace(allow)
    }

    /// Takes a slot for a connection from `peer`, or says (and counts) why not. A peer of
    /// unknown address is subject to the total limit only, and refused when an allowlist is set.
    pub fn admit(self: &Arc<Self>, peer: Option<SocketAddr>) -> Result<Admission, Refusal> {
        let ip = peer.map(|p| p.ip());
        let result = self.try_admit(ip);
        match result {
            Ok(()) => {
                self.counters.accepted.increment(1);
                self.counters.open.increment(1.0);
                Ok(Admission {
                    guard: self.clone(),
                    key: ip.map(address_key),
                })
            }
            Err(refusal) => {
                self.refused(refusal);
                Err(refusal)
            }
        }
    }

    fn try_admit(&self, ip: Option<IpAddr>) -> Result<(), Refusal> {
        if !self.allow.get().permits_peer(ip) {
            return Err(Refusal::NotAllowed);
        }
        let mut occupancy = self.occupancy.lock().unwrap_or_else(|e| e.into_inner());
        if occupancy.open >= self.limits.max_connections {
            return Err(Refusal::MaxConnections);
        }
        if let Some(ip) = ip {
            let count = occupancy.per_address.entry(address_key(ip)).or_insert(0);
            if *count >= self.limits.max_connections_per_address {
                return Err(Refusal::PerAddress);
            }
            *count += 1;
        }
        occupancy.open += 1;
        Ok(())
    }

    /// Counts a refusal decided elsewhere (a failed TLS handshake).
    pub fn refused(&self, refusal: Refusal) {
        let i = match refusal {
            Refusal::NotAllowed => 0,
            Refusal::MaxConnections => 1,
            Refusal::PerAddress => 2,
            Refusal::TlsHandshake => 3,
        };
        self.counters.refused[i].increment(1);
    }

    pub fn closed(&self, closure: Closure) {
        let i = match closure {
            Closure::Idle => 0,
            Closure::FrameBacklog => 1,
            Closure::NotAllowed => 2,
        };
        self.counters.closed[i].increment(1);
    }

    fn release(&self, key: Option<u128>) {
        let mut occupancy = self.occupancy.lock().unwrap_or_else(|e| e.into_inner());
        occupancy.open = occupancy.open.saturating_sub(1);
        if let Some(key) = key
            && let Some(count) = occupancy.per_address.get_mut(&key)
        {
            *count -= 1;
            if *count == 0 {
                occupancy.per_address.remove(&key);
            }
        }
        drop(occupancy);
        self.counters.open.decrement(1.0);
    }

    /// Open connections now (all listener threads of the source).
    pub fn open_connections(&self) -> usize {
        self.occupancy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
    }
}

/// A connection's slot; released when dropped.
pub struct Admission {
    guard: Arc<ConnectionGuard>,
    key: Option<u128>,
}

impl Admission {
    pub fn guard(&self) -> &Arc<ConnectionGuard> {
        &self.guard
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.guard.release(self.key);
    }
}

/// Tracks one connection's progress against the idle and frame-backlog limits.
#[derive(Debug)]
pub struct StallWatch {
    last_progress: Instant,
    messages_seen: u64,
}

impl StallWatch {
    pub fn new(now: Instant) -> Self {
        StallWatch {
            last_progress: now,
            messages_seen: 0,
        }
    }

    /// Stops the idle clock for `by`: time the reader itself was blocked (a full worker queue)
    /// is not the client's idleness.
    pub fn postpone(&mut self, by: Duration) {
        self.last_progress += by;
    }

    /// `messages` is the connection's running count of completed (or rejected) messages and
    /// `unfinished` the length so far of the message being received. `Some` when a limit is hit.
    pub fn check(
        &mut self,
        limits: &ConnectionLimits,
        messages: u64,
        unfinished: usize,
        now: Instant,
    ) -> Option<Closure> {
        if messages != self.messages_seen {
            self.messages_seen = messages;
            self.last_progress = now;
        }
        if unfinished > limits.max_frame_backlog_bytes {
            return Some(Closure::FrameBacklog);
        }
        match limits.idle_timeout {
            Some(t) if now.duration_since(self.last_progress) >= t => Some(Closure::Idle),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_allowlist_reaches_views_taken_before() {
        let guard = ConnectionGuard::new(
            "reload",
            Allowlist::parse(&["10.0.0.0/8"]).unwrap(),
            ConnectionLimits::UNLIMITED,
        );
        let mut view = guard.allowlist();
        let outside: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(!view.current().permits(outside));
        assert!(guard.admit(Some(SocketAddr::new(outside, 1))).is_err());
        assert!(guard.set_allowlist(Allowlist::parse(&["192.0.2.0/24"]).unwrap()));
        assert!(
            !guard.set_allowlist(Allowlist::parse(&["192.0.2.0/24"]).unwrap()),
            "the same list again is no change"
        );
        assert!(view.current().permits(outside));
        assert!(!view.current().permits("10.1.2.3".parse().unwrap()));
        assert!(guard.admit(Some(SocketAddr::new(outside, 1))).is_ok());

        // What stream readers watch: a change is seen once.
        let mut watcher = guard.allowlist();
        assert!(watcher.if_changed().is_none());
        guard.set_allowlist(Allowlist::parse(&["198.51.100.0/24"]).unwrap());
        let changed = watcher.if_changed().expect("a new list");
        assert!(!changed.permits_peer(Some(outside)));
        assert!(
            !changed.permits_peer(None),
            "an unknown sender, with a list set"
        );
        assert!(watcher.if_changed().is_none());
        assert!(Allowlist::default().permits_peer(None));
    }

    #[test]
    fn allowlist_matches_v4_v6_and_mapped() {
        let a = Allowlist::parse(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(a.permits(ip("10.1.2.3")));
        assert!(a.permits(ip("::ffff:10.9.9.9")));
        assert!(!a.permits(ip("11.0.0.1")));
        assert!(a.permits(ip("2001:db8:1::1")));
        assert!(!a.permits(ip("2001:db9::1")));
        assert!(a.permits(ip("192.0.2.7")));
        assert!(!a.permits(ip("192.0.2.8")));
        assert!(Allowlist::default().permits(ip("1.2.3.4")));
        let all = Allowlist::parse(&["0.0.0.0/0"]).unwrap();
        assert!(all.permits(ip("203.0.113.1")) && !all.permits(ip("2001:db8::1")));
        assert!(
            Allowlist::parse(&["10.0.0.0/33"])
                .unwrap_err()
                .contains("0..=32")
        );
        assert!(Allowlist::parse(&["nope"]).unwrap_err().contains("`nope`"));
    }

    #[test]
    fn admission_enforces_total_and_per_address_and_releases() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let limits = ConnectionLimits {
            max_connections: 3,
            max_connections_per_address: 2,
            ..ConnectionLimits::UNLIMITED
        };
        let guard = metrics::with_local_recorder(&recorder, || {
            ConnectionGuard::new("g", Allowlist::parse(&["127.0.0.0/8"]).unwrap(), limits)
        });
        let peer = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let a1 = guard.admit(peer("127.0.0.1:1")).unwrap();
        let _a2 = guard.admit(peer("127.0.0.1:2")).unwrap();
        assert_eq!(
            guard.admit(peer("127.0.0.1:3")).err(),
            Some(Refusal::PerAddress)
        );
        let _b1 = guard.admit(peer("127.0.0.2:1")).unwrap();
        assert_eq!(
            guard.admit(peer("127.0.0.3:1")).err(),
            Some(Refusal::MaxConnections)
        );
        assert_eq!(
            guard.admit(peer("10.0.0.1:1")).err(),
            Some(Refusal::NotAllowed)
        );
        drop(a1);
        assert_eq!(guard.open_connections(), 2);
        let _a3 = guard.admit(peer("127.0.0.1:4")).unwrap();
        let text = handle.render();
        for reason in ["per_address", "max_connections", "not_allowed"] {
            assert!(
                text.contains(&format!(
                    "sluice_connections_refused_total{{source=\"g\",reason=\"{reason}\"}} 1"
                )),
                "{text}"
            );
        }
        assert!(
            text.contains("sluice_tcp_connections_open{source=\"g\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn ipv6_clients_share_a_slot_count_per_64() {
        let limits = ConnectionLimits {
            max_connections_per_address: 1,
            ..ConnectionLimits::UNLIMITED
        };
        let guard = ConnectionGuard::new("v6", Allowlist::default(), limits);
        let _a = guard
            .admit(Some("[2001:db8::1]:1".parse().unwrap()))
            .unwrap();
        assert_eq!(
            guard.admit(Some("[2001:db8::2]:1".parse().unwrap())).err(),
            Some(Refusal::PerAddress)
        );
        assert!(
            guard
                .admit(Some("[2001:db8:0:1::1]:1".parse().unwrap()))
                .is_ok()
        );
    }

    #[test]
    fn stall_watch_closes_idle_and_backlogged_connections() {
        let limits = ConnectionLimits {
            idle_timeout: Some(Duration::from_secs(5)),
            max_frame_backlog_bytes: 100,
            ..ConnectionLimits::UNLIMITED
        };
        let t0 = Instant::now();
        let mut w = StallWatch::new(t0);
        assert_eq!(w.check(&limits, 0, 10, t0 + Duration::from_secs(4)), None);
        // A completed message resets the idle clock; trickled bytes do not.
        assert_eq!(w.check(&limits, 1, 10, t0 + Duration::from_secs(4)), None);
        assert_eq!(w.check(&limits, 1, 50, t0 + Duration::from_secs(8)), None);
        assert_eq!(
            w.check(&limits, 1, 60, t0 + Duration::from_secs(9)),
            Some(Closure::Idle)
        );
        assert_eq!(
            w.check(&limits, 2, 101, t0 + Duration::from_secs(9)),
            Some(Closure::FrameBacklog)
        );
    }
}
