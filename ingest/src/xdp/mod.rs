//! XDP loader: attaches the `ingest-ebpf` programs, feeds their config maps and reads their
//! counters.
//!
//! Lifecycle: [`start`] mounts bpffs if needed, removes what a killed earlier run left pinned
//! under [`XdpConfig::pin_path`], loads the embedded object, fills the config maps, pins the maps
//! (for `sluice top`) and attaches the XDP program (driver mode, falling back to generic) with a
//! pinned bpf_link. Dropping the [`XdpHandle`] detaches and unpins everything. A run killed by
//! SIGKILL leaves the link pinned, so filtering continues until the next start cleans it up.

mod loader;
mod stats;

use std::{net::IpAddr, path::PathBuf};

pub use loader::{XdpHandle, start, start_or_disable};
pub use stats::{
    PinnedMaps, SourceStats, XdpStats, export_configured_metric, export_disabled_metric,
    prometheus_text,
};

/// Default bpffs directory for this daemon's pins.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/sluice";

/// `[xdp]` in the config file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpConfig {
    /// Interfaces to attach the XDP program to. Empty: no XDP, but socket steering still applies.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Destination ports counted and filtered (UDP and TCP).
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    /// Allowed source CIDRs (IPv4 and IPv6); a bare address means a host route.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Drop packets to `ports` from sources outside `allow`.
    #[serde(default)]
    pub enforce_allowlist: bool,
    /// Per-source packet rate limit (token bucket); `None` disables it.
    #[serde(default)]
    pub rate_limit_pps: Option<u64>,
    /// Packets a source may send ahead of its rate; default one tenth of a second's worth.
    #[serde(default)]
    pub rate_limit_burst: Option<u64>,
    #[serde(default)]
    pub steering: Steering,
    /// Spread accepted UDP to `ports` over every CPU with a CPUMAP redirect (for NICs that
    /// deliver one receive queue). Per-sender order is not kept across cores.
    #[serde(default)]
    pub cpu_redirect: bool,
    /// Per-CPU queue length of the CPUMAP redirect.
    #[serde(default = "default_cpu_queue")]
    pub cpu_redirect_queue: u32,
    /// Attach mode; `auto` tries driver mode, then generic.
    #[serde(default)]
    pub mode: XdpMode,
    /// bpffs directory for this instance's pinned maps and links (one daemon per directory).
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    /// Sources exported as per-source metric series (the busiest N; bounds cardinality).
    #[serde(default = "default_top_sources")]
    pub metrics_top_sources: usize,
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            ports: default_ports(),
            allow: Vec::new(),
            enforce_allowlist: false,
            rate_limit_pps: None,
            rate_limit_burst: None,
            steering: Steering::Off,
            cpu_redirect: false,
            cpu_redirect_queue: default_cpu_queue(),
            mode: XdpMode::Auto,
            pin_path: default_pin_path(),
            metrics_top_sources: default_top_sources(),
        }
    }
}

fn default_ports() -> Vec<u16> {
    vec![514]
}
fn default_cpu_queue() -> u32 {
    2048
}
fn default_pin_path() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_PATH)
}
fn default_top_sources() -> usize {
    20
}

/// How UDP datagrams are spread over the per-core reader sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Steering {
    /// Kernel default (flow hash): one sender lands on one socket.
    #[default]
    Off,
    /// The socket of the CPU that received the packet.
    Cpu,
    /// A random socket per datagram.
    Random,
    /// Hash of source address and port.
    Hash,
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver (native) mode, falling back to generic when the driver lacks XDP support.
    #[default]
    Auto,
    Driver,
    Generic,
}

/// Whether this binary carries the XDP program (cargo feature `xdp`, on by default).
pub const PROGRAM_EMBEDDED: bool = cfg!(feature = "xdp");

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(
        "this sluice was built without its XDP program (cargo feature `xdp` off); remove the \
         [xdp] section or use a default build"
    )]
    NotEmbedded,
    #[error(
        "missing privileges for XDP (need CAP_BPF or CAP_SYS_ADMIN, and CAP_NET_ADMIN); \
         running without XDP"
    )]
    PermissionDenied,
    #[error("invalid [xdp] config: {0}")]
    Config(String),
    #[error("bpffs at {path}: {reason}")]
    Bpffs { path: PathBuf, reason: String },
    #[error("another sluice instance owns the XDP pins under {0} (lock held)")]
    InUse(PathBuf),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {reason}")]
    Map { name: &'static str, reason: String },
    #[error("attaching XDP to {interface}: {reason}")]
    Attach { interface: String, reason: String },
    #[error("socket steering: {0}")]
    Steering(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// An allowlist entry after validation: network address (host bits cleared) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .trim()
            .parse()
            .map_err(|e| format!("{text:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .map_err(|e| format!("{text:?}: prefix: {e}"))?,
            None => max,
        };
        if prefix > max {
            return Err(format!("{text:?}: prefix /{prefix} longer than {max} bits"));
        }
        let addr = match addr {
            IpAddr::V4(v4) => {
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix)
                };
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix)
                };
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        };
        Ok(Cidr { addr, prefix })
    }
}

impl XdpConfig {
    /// Checks every bound before anything touches the kernel.
    pub fn validate(&self) -> Result<Vec<Cidr>, XdpError> {
        use sluice_ingest_ebpf::{MAX_ALLOW_PREFIXES, MAX_PORTS};
        if self.ports.is_empty() {
            return Err(XdpError::Config("ports must not be empty".into()));
        }
        if self.ports.len() > MAX_PORTS as usize {
            return Err(XdpError::Config(format!("at most {MAX_PORTS} ports")));
        }
        if self.ports.contains(&0) {
            return Err(XdpError::Config("port 0 is not a destination port".into()));
        }
        let cidrs = self
            .allow
            .iter()
            .map(|entry| {
                entry
                    .parse::<Cidr>()
                    .map_err(|e| XdpError::Config(format!("allow: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (v4, v6): (Vec<&Cidr>, Vec<&Cidr>) = cidrs.iter().partition(|c| c.addr.is_ipv4());
        if v4.len() > MAX_ALLOW_PREFIXES as usize || v6.len() > MAX_ALLOW_PREFIXES as usize {
            return Err(XdpError::Config(format!(
                "at most {MAX_ALLOW_PREFIXES} prefixes per family"
            )));
        }
        if self.enforce_allowlist && cidrs.is_empty() {
            return Err(XdpError::Config(
                "enforce_allowlist = true with an empty allow list would drop every sender".into(),
            ));
        }
        if self.rate_limit_pps == Some(0) {
            return Err(XdpError::Config(
                "rate_limit_pps must be > 0 (omit it to disable)".into(),
            ));
        }
        if self.rate_limit_burst.is_some() && self.rate_limit_pps.is_none() {
            return Err(XdpError::Config(
                "rate_limit_burst needs rate_limit_pps".into(),
            ));
        }
        if self.cpu_redirect && !(1..=65_536).contains(&self.cpu_redirect_queue) {
            return Err(XdpError::Config(
                "cpu_redirect_queue must be within 1..=65536".into(),
            ));
        }
        if self.metrics_top_sources > 10_000 {
            return Err(XdpError::Config(
                "metrics_top_sources must be ≤ 10000".into(),
            ));
        }
        for name in &self.interfaces {
            if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
                return Err(XdpError::Config(format!("invalid interface name {name:?}")));
            }
        }
        Ok(cidrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_masks_host_bits_and_rejects_bad_prefixes() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(
            c,
            Cidr {
                addr: "10.0.0.0".parse().unwrap(),
                prefix: 8
            }
        );
        let c: Cidr = "2001:db8::1".parse().unwrap();
        assert_eq!(c.prefix, 128);
        let c: Cidr = "2001:db8:ffff::/32".parse().unwrap();
        assert_eq!(c.addr, "2001:db8::".parse::<IpAddr>().unwrap());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense/8".parse::<Cidr>().is_err());
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix, 0);
    }

    #[test]
    fn config_defaults_and_validation() {
        let cfg: XdpConfig = toml::from_str("interfaces = [\"eth0\"]").unwrap();
        assert_eq!(cfg.ports, vec![514]);
        assert_eq!(cfg.pin_path, PathBuf::from(DEFAULT_PIN_PATH));
        cfg.validate().unwrap();
        let bad: XdpConfig = toml::from_str("enforce_allowlist = true").unwrap();
        assert!(matches!(bad.validate(), Err(XdpError::Config(_))));
        let bad: XdpConfig = toml::from_str("rate_limit_pps = 0").unwrap();
        assert!(bad.validate().is_err());
        assert!(toml::from_str::<XdpConfig>("bogus = 1").is_err());
        let cfg: XdpConfig = toml::from_str("steering = \"random\"\nmode = \"generic\"").unwrap();
        assert_eq!(
            (cfg.steering, cfg.mode),
            (Steering::Random, XdpMode::Generic)
        );
    }
}
