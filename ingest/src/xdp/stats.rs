//! Reading the counter maps (from the live loader or from pins, for `sluice top`) and turning
//! them into metrics.

use std::{borrow::Borrow, net::IpAddr, path::Path};

use aya::maps::{Map, MapData, PerCpuArray, PerCpuHashMap};
use sluice_ingest_ebpf::{
    Action, MAP_SOURCES, MAP_TOTALS, Proto, SourceCounters, SourceKey, Totals, totals_index,
};

use super::XdpError;

/// Counters summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdpStats {
    /// `[action][proto]` in [`Action::ALL`] × [`Proto::ALL`] order.
    pub totals: [[Totals; 2]; 3],
    /// Packets to configured ports handled on each CPU (index = CPU): the per-core load XDP saw.
    pub per_cpu_packets: Vec<u64>,
    /// Every source in the LRU map, busiest (by packets) first.
    pub sources: Vec<SourceStats>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceStats {
    pub addr: IpAddr,
    pub packets: u64,
    pub bytes: u64,
    pub dropped_allowlist: u64,
    pub dropped_ratelimit: u64,
}

impl XdpStats {
    pub fn total(&self, action: Action, proto: Proto) -> Totals {
        self.totals[action as usize][proto as usize]
    }

    pub fn source(&self, addr: IpAddr) -> Option<&SourceStats> {
        let addr = canonical(addr);
        self.sources.iter().find(|s| s.addr == addr)
    }
}

/// IPv4-mapped IPv6 addresses are reported as IPv4, the way the XDP program keys them.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

fn source_addr(key: &SourceKey) -> IpAddr {
    canonical(IpAddr::V6(key.addr.into()))
}

pub(super) fn read(ebpf: &aya::Ebpf) -> Result<XdpStats, XdpError> {
    let totals = ebpf.map(MAP_TOTALS).ok_or(XdpError::Map {
        name: MAP_TOTALS,
        reason: "missing".into(),
    })?;
    let sources = ebpf.map(MAP_SOURCES).ok_or(XdpError::Map {
        name: MAP_SOURCES,
        reason: "missing".into(),
    })?;
    let totals: PerCpuArray<&MapData, Totals> =
        PerCpuArray::try_from(totals).map_err(|e| XdpError::Map {
            name: MAP_TOTALS,
            reason: e.to_string(),
        })?;
    let sources: PerCpuHashMap<&MapData, SourceKey, SourceCounters> =
        PerCpuHashMap::try_from(sources).map_err(|e| XdpError::Map {
            name: MAP_SOURCES,
            reason: e.to_string(),
        })?;
    collect(&totals, &sources)
}

fn collect<T: Borrow<MapData>, S: Borrow<MapData>>(
    totals: &PerCpuArray<T, Totals>,
    sources: &PerCpuHashMap<S, SourceKey, SourceCounters>,
) -> Result<XdpStats, XdpError> {
    let map_err = |name: &'static str| {
        move |e: aya::maps::MapError| XdpError::Map {
            name,
            reason: e.to_string(),
        }
    };
    let mut stats = XdpStats::default();
    for action in Action::ALL {
        for proto in Proto::ALL {
            let per_cpu = totals
                .get(&totals_index(action, proto), 0)
                .map_err(map_err(MAP_TOTALS))?;
            if stats.per_cpu_packets.len() < per_cpu.len() {
                stats.per_cpu_packets.resize(per_cpu.len(), 0);
            }
            let slot = &mut stats.totals[action as usize][proto as usize];
            for (cpu, value) in per_cpu.iter().enumerate() {
                slot.packets += value.packets;
                slot.bytes += value.bytes;
                stats.per_cpu_packets[cpu] += value.packets;
            }
        }
    }
    for entry in sources.iter() {
        // An entry evicted between key walk and lookup is simply skipped.
        let Ok((key, per_cpu)) = entry else { continue };
        let mut source = SourceStats {
            addr: source_addr(&key),
            packets: 0,
            bytes: 0,
            dropped_allowlist: 0,
            dropped_ratelimit: 0,
        };
        for value in per_cpu.iter() {
            source.packets += value.packets;
            source.bytes += value.bytes;
            source.dropped_allowlist += value.dropped_allowlist;
            source.dropped_ratelimit += value.dropped_ratelimit;
        }
        stats.sources.push(source);
    }
    stats
        .sources
        .sort_by(|a, b| b.packets.cmp(&a.packets).then(a.addr.cmp(&b.addr)));
    Ok(stats)
}

/// The counter maps opened from their pins (another process, e.g. `sluice top`).
pub struct PinnedMaps {
    totals: PerCpuArray<MapData, Totals>,
    sources: PerCpuHashMap<MapData, SourceKey, SourceCounters>,
}

impl PinnedMaps {
    pub fn open(pin_dir: &Path) -> Result<Self, XdpError> {
        let open = |name: &'static str| -> Result<Map, XdpError> {
            let data = MapData::from_pin(pin_dir.join(name)).map_err(|e| XdpError::Map {
                name,
                reason: format!("opening pin in {}: {e}", pin_dir.display()),
            })?;
            Map::from_map_data(data).map_err(|e| XdpError::Map {
                name,
                reason: e.to_string(),
            })
        };
        let totals = PerCpuArray::try_from(open(MAP_TOTALS)?).map_err(|e| XdpError::Map {
            name: MAP_TOTALS,
            reason: e.to_string(),
        })?;
        let sources = PerCpuHashMap::try_from(open(MAP_SOURCES)?).map_err(|e| XdpError::Map {
            name: MAP_SOURCES,
            reason: e.to_string(),
        })?;
        Ok(Self { totals, sources })
    }

    pub fn read(&self) -> Result<XdpStats, XdpError> {
        collect(&self.totals, &self.sources)
    }
}

/// Sets `sluice_xdp_enabled 0` (privileges missing or XDP not configured).
pub fn export_disabled_metric() {
    metrics::gauge!("sluice_xdp_enabled").set(0.0);
}

/// `sluice_xdp_configured`: whether the config asks for XDP, so that an alert can tell "XDP
/// wanted but not attached" from "XDP not used".
pub fn export_configured_metric(configured: bool) {
    metrics::gauge!("sluice_xdp_configured").set(if configured { 1.0 } else { 0.0 });
}

/// Publishes totals and the busiest `top` sources. Counters are set absolutely from the maps,
/// which are the source of truth. Sources that leave the top N keep their last value until the
/// exporter's idle timeout drops them, so the series count stays near `top`.
pub(super) fn export(stats: &XdpStats, top: usize) {
    metrics::gauge!("sluice_xdp_enabled").set(1.0);
    for action in Action::ALL {
        for proto in Proto::ALL {
            let totals = stats.total(action, proto);
            let labels = [("action", action.label()), ("proto", proto.label())];
            metrics::counter!("sluice_xdp_packets_total", &labels).absolute(totals.packets);
            metrics::counter!("sluice_xdp_bytes_total", &labels).absolute(totals.bytes);
        }
    }
    for (cpu, packets) in stats.per_cpu_packets.iter().enumerate() {
        metrics::counter!("sluice_xdp_cpu_packets_total", "cpu" => cpu.to_string())
            .absolute(*packets);
    }
    metrics::gauge!("sluice_xdp_sources_tracked").set(stats.sources.len() as f64);
    for source in stats.sources.iter().take(top) {
        let addr = source.addr.to_string();
        metrics::counter!("sluice_xdp_source_packets_total", "source" => addr.clone())
            .absolute(source.packets);
        metrics::counter!("sluice_xdp_source_bytes_total", "source" => addr.clone())
            .absolute(source.bytes);
        metrics::counter!("sluice_xdp_source_dropped_total", "source" => addr.clone(), "reason" => "allowlist")
            .absolute(source.dropped_allowlist);
        metrics::counter!("sluice_xdp_source_dropped_total", "source" => addr, "reason" => "ratelimit")
            .absolute(source.dropped_ratelimit);
    }
}

/// Prometheus text of `stats` (totals and the top `top` sources), as `export` would publish it;
/// used by `sluice top --once` when no metrics endpoint is given.
pub fn prometheus_text(stats: &XdpStats, top: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for action in Action::ALL {
        for proto in Proto::ALL {
            let t = stats.total(action, proto);
            let labels = format!("action=\"{}\",proto=\"{}\"", action.label(), proto.label());
            let _ = writeln!(out, "sluice_xdp_packets_total{{{labels}}} {}", t.packets);
            let _ = writeln!(out, "sluice_xdp_bytes_total{{{labels}}} {}", t.bytes);
        }
    }
    for source in stats.sources.iter().take(top) {
        let _ = writeln!(
            out,
            "sluice_xdp_source_packets_total{{source=\"{}\"}} {}",
            source.addr, source.packets
        );
    }
    out
}
