//! XDP loader: attaches the `ingest-ebpf` programs and reads their maps.
//! PLACEHOLDER config contract until the loader lands.

/// `[xdp]` in the config file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpConfig {
    /// Interfaces to attach the XDP program to.
    pub interfaces: Vec<String>,
    /// Destination ports counted and filtered.
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    /// Allowed source CIDRs (IPv4 and IPv6).
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub enforce_allowlist: bool,
    /// Per-source packet rate limit (token bucket); `None` disables it.
    #[serde(default)]
    pub rate_limit_pps: Option<u64>,
    #[serde(default)]
    pub steering: Steering,
}

fn default_ports() -> Vec<u16> {
    vec![514]
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
