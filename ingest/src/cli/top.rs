//! `sluice top`: live view of per-source traffic, drops by reason and per-core load, read from
//! the XDP maps pinned by a running daemon (and, optionally, its metrics endpoint).
//!
//! `--once` prints one text snapshot (rates over one interval) instead of the terminal UI.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use sluice_ingest_ebpf::{Action, Proto};

use crate::xdp::{DEFAULT_PIN_PATH, PinnedMaps, XdpStats};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// bpffs directory the daemon pinned its XDP maps in (`[xdp] pin_path`).
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Daemon metrics endpoint, e.g. http://127.0.0.1:9514/metrics (pipeline counters).
    #[arg(long)]
    pub metrics: Option<String>,
    /// Print one text snapshot and exit.
    #[arg(long)]
    pub once: bool,
    /// Sampling interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Sources shown.
    #[arg(long, default_value_t = 15)]
    pub top: usize,
}

pub fn run(args: TopArgs) -> anyhow::Result<std::process::ExitCode> {
    let maps = PinnedMaps::open(&args.pin_path).with_context(|| {
        format!(
            "no running sluice XDP instance pinned under {} (root needed)",
            args.pin_path.display()
        )
    })?;
    let interval = Duration::from_millis(args.interval_ms.clamp(100, 60_000));
    if args.once {
        let first = Sample::take(&maps)?;
        std::thread::sleep(interval);
        let second = Sample::take(&maps)?;
        let metrics = args.metrics.as_deref().map(fetch_metrics);
        print!(
            "{}",
            render_text(&second, Some(&first), args.top, metrics.as_ref())
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    tui::run(&maps, &args, interval)?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// One reading of the maps and of /proc/stat.
pub struct Sample {
    pub at: Instant,
    pub stats: XdpStats,
    pub cpu_times: Vec<(u64, u64)>,
}

impl Sample {
    pub fn take(maps: &PinnedMaps) -> anyhow::Result<Sample> {
        Ok(Sample {
            at: Instant::now(),
            stats: maps.read()?,
            cpu_times: cpu_times(),
        })
    }
}

/// (busy, total) jiffies per CPU from /proc/stat.
fn cpu_times() -> Vec<(u64, u64)> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|line| {
            let fields: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            let total: u64 = fields.iter().sum();
            let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

fn fetch_metrics(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// metrics URLs are supported")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr = host
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    Ok(body.to_string())
}

/// Pipeline counters worth a glance (non-XDP, non-per-source), summed over labels.
fn pipeline_lines(metrics: &str) -> Vec<(String, f64)> {
    let mut sums: Vec<(String, f64)> = Vec::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("sluice_") && !l.starts_with("sluice_xdp_source"))
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series).to_string();
        match sums.iter_mut().find(|(n, _)| *n == name) {
            Some((_, sum)) => *sum += value,
            None => sums.push((name, value)),
        }
    }
    sums
}

fn rate(now: u64, before: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        0.0
    } else {
        now.saturating_sub(before) as f64 / seconds
    }
}

fn human(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// Per-source rows: (address, pps, bytes/s, packets, dropped allowlist, dropped rate limit).
fn source_rows(
    now: &XdpStats,
    before: Option<&XdpStats>,
    seconds: f64,
    top: usize,
) -> Vec<[String; 6]> {
    let mut rows: Vec<(f64, [String; 6])> = now
        .sources
        .iter()
        .map(|s| {
            let prev = before.and_then(|b| b.source(s.addr));
            let pps = prev.map_or(0.0, |p| rate(s.packets, p.packets, seconds));
            let bps = prev.map_or(0.0, |p| rate(s.bytes, p.bytes, seconds));
            (
                pps,
                [
                    s.addr.to_string(),
                    human(pps),
                    human(bps),
                    s.packets.to_string(),
                    s.dropped_allowlist.to_string(),
                    s.dropped_ratelimit.to_string(),
                ],
            )
        })
        .collect();
    // Busiest now first; ties (e.g. no previous sample) keep the all-time order.
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    rows.into_iter().take(top).map(|(_, row)| row).collect()
}

/// Text snapshot (also the README sample). `before` gives rates; without it only totals.
pub fn render_text(
    now: &Sample,
    before: Option<&Sample>,
    top: usize,
    metrics: Option<&Result<String, String>>,
) -> String {
    let seconds = before.map_or(0.0, |b| now.at.duration_since(b.at).as_secs_f64());
    let mut out = render_once(&now.stats, before.map(|b| (&b.stats, seconds)), top);
    let _ = writeln!(out, "\nPER-CORE LOAD");
    let _ = writeln!(out, "{:<5} {:>8} {:>12}", "cpu", "busy%", "xdp pps");
    for (cpu, (busy, total)) in now.cpu_times.iter().enumerate() {
        let (busy_pct, pps) = match before.and_then(|b| b.cpu_times.get(cpu).map(|t| (b, t))) {
            Some((b, (b_busy, b_total))) => {
                let dt = total.saturating_sub(*b_total).max(1) as f64;
                let xdp_before = b.stats.per_cpu_packets.get(cpu).copied().unwrap_or(0);
                let xdp_now = now.stats.per_cpu_packets.get(cpu).copied().unwrap_or(0);
                (
                    100.0 * busy.saturating_sub(*b_busy) as f64 / dt,
                    rate(xdp_now, xdp_before, seconds),
                )
            }
            None => (0.0, 0.0),
        };
        let _ = writeln!(out, "{:<5} {:>7.1}% {:>12}", cpu, busy_pct, human(pps));
    }
    if let Some(metrics) = metrics {
        let _ = writeln!(out, "\nPIPELINE (metrics endpoint)");
        match metrics {
            Ok(text) => {
                for (name, value) in pipeline_lines(text) {
                    let _ = writeln!(out, "{name:<48} {}", human(value));
                }
            }
            Err(e) => {
                let _ = writeln!(out, "unavailable: {e}");
            }
        }
    }
    out
}

/// Totals, drops by reason and the top sources as text.
pub fn render_once(now: &XdpStats, before: Option<(&XdpStats, f64)>, top: usize) -> String {
    let seconds = before.map_or(0.0, |(_, s)| s);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "XDP TOTALS{}",
        if before.is_some() {
            format!(" (rates over {seconds:.1}s)")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "{:<16} {:<5} {:>12} {:>12} {:>10} {:>10}",
        "action", "proto", "packets", "bytes", "pps", "B/s"
    );
    for action in Action::ALL {
        for proto in Proto::ALL {
            let t = now.total(action, proto);
            let (pps, bps) = match before {
                Some((b, s)) => {
                    let p = b.total(action, proto);
                    (rate(t.packets, p.packets, s), rate(t.bytes, p.bytes, s))
                }
                None => (0.0, 0.0),
            };
            let _ = writeln!(
                out,
                "{:<16} {:<5} {:>12} {:>12} {:>10} {:>10}",
                action.label(),
                proto.label(),
                t.packets,
                t.bytes,
                human(pps),
                human(bps)
            );
        }
    }
    let dropped = |a: Action| {
        Proto::ALL
            .iter()
            .map(|p| now.total(a, *p).packets)
            .sum::<u64>()
    };
    let _ = writeln!(
        out,
        "\nDROPS  allowlist {}  rate-limit {}",
        dropped(Action::DropAllowlist),
        dropped(Action::DropRateLimit)
    );
    let _ = writeln!(out, "\nTOP SOURCES ({} tracked)", now.sources.len());
    let _ = writeln!(
        out,
        "{:<40} {:>9} {:>9} {:>12} {:>10} {:>10}",
        "source", "pps", "B/s", "packets", "drop:allow", "drop:rate"
    );
    for row in source_rows(now, before.map(|(b, _)| b), seconds, top) {
        let _ = writeln!(
            out,
            "{:<40} {:>9} {:>9} {:>12} {:>10} {:>10}",
            row[0], row[1], row[2], row[3], row[4], row[5]
        );
    }
    out
}

mod tui {
    use std::time::{Duration, Instant};

    use ratatui::{
        crossterm::event::{self, Event, KeyCode, KeyModifiers},
        layout::{Constraint, Layout},
        style::{Modifier, Style},
        widgets::{Block, Borders, Paragraph, Row, Table},
    };

    use super::{Sample, TopArgs, fetch_metrics, render_once, source_rows};
    use crate::xdp::PinnedMaps;

    pub(super) fn run(maps: &PinnedMaps, args: &TopArgs, interval: Duration) -> anyhow::Result<()> {
        let mut terminal = ratatui::init();
        let result = (|| -> anyhow::Result<()> {
            let mut before = Sample::take(maps)?;
            let mut now = Sample::take(maps)?;
            let mut metrics = args.metrics.as_deref().map(fetch_metrics);
            loop {
                let seconds = now.at.duration_since(before.at).as_secs_f64();
                terminal.draw(|frame| {
                    let [top_area, sources_area, bottom_area] = Layout::vertical([
                        Constraint::Length(11),
                        Constraint::Min(6),
                        Constraint::Length((now.cpu_times.len() as u16 + 3).min(20)),
                    ])
                    .areas(frame.area());
                    let totals = render_once(&now.stats, Some((&before.stats, seconds)), 0);
                    let totals: String = totals.lines().take(9).collect::<Vec<_>>().join("\n");
                    frame.render_widget(
                        Paragraph::new(totals).block(
                            Block::default()
                                .borders(Borders::ALL)
                                .title(" sluice top — q to quit "),
                        ),
                        top_area,
                    );
                    let rows = source_rows(&now.stats, Some(&before.stats), seconds, args.top)
                        .into_iter()
                        .map(|r| Row::new(r.to_vec()));
                    let widths = [
                        Constraint::Length(40),
                        Constraint::Length(9),
                        Constraint::Length(9),
                        Constraint::Length(12),
                        Constraint::Length(10),
                        Constraint::Length(10),
                    ];
                    let header =
                        Row::new(["source", "pps", "B/s", "packets", "drop:allow", "drop:rate"])
                            .style(Style::default().add_modifier(Modifier::BOLD));
                    frame.render_widget(
                        Table::new(rows, widths)
                            .header(header)
                            .block(Block::default().borders(Borders::ALL).title(" sources ")),
                        sources_area,
                    );
                    let [cores_area, metrics_area] = Layout::horizontal([
                        Constraint::Percentage(40),
                        Constraint::Percentage(60),
                    ])
                    .areas(bottom_area);
                    let text = super::render_text(&now, Some(&before), 0, None);
                    let cores: String = text
                        .split("PER-CORE LOAD\n")
                        .nth(1)
                        .unwrap_or("")
                        .to_string();
                    frame.render_widget(
                        Paragraph::new(cores).block(
                            Block::default()
                                .borders(Borders::ALL)
                                .title(" per-core load "),
                        ),
                        cores_area,
                    );
                    let metrics_text = match &metrics {
                        None => "pass --metrics URL for pipeline counters".to_string(),
                        Some(Ok(body)) => super::pipeline_lines(body)
                            .into_iter()
                            .map(|(n, v)| format!("{n:<44} {}", super::human(v)))
                            .collect::<Vec<_>>()
                            .join("\n"),
                        Some(Err(e)) => format!("metrics unavailable: {e}"),
                    };
                    frame.render_widget(
                        Paragraph::new(metrics_text)
                            .block(Block::default().borders(Borders::ALL).title(" pipeline ")),
                        metrics_area,
                    );
                })?;
                let deadline = Instant::now() + interval;
                while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                    if event::poll(left)?
                        && let Event::Key(key) = event::read()?
                    {
                        let ctrl_c = key.code == KeyCode::Char('c')
                            && key.modifiers.contains(KeyModifiers::CONTROL);
                        if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                            return Ok(());
                        }
                    }
                }
                before = std::mem::replace(&mut now, Sample::take(maps)?);
                metrics = args.metrics.as_deref().map(fetch_metrics);
            }
        })();
        ratatui::restore();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdp::SourceStats;

    #[test]
    fn text_snapshot_shows_rates_drops_and_sources() {
        let mut before = XdpStats {
            per_cpu_packets: vec![0, 0],
            ..XdpStats::default()
        };
        let mut now = before.clone();
        now.totals[Action::Pass as usize][Proto::Udp as usize].packets = 2000;
        now.totals[Action::DropAllowlist as usize][Proto::Udp as usize].packets = 7;
        let source = |addr: &str, packets| SourceStats {
            addr: addr.parse().unwrap(),
            packets,
            bytes: packets * 100,
            dropped_allowlist: 0,
            dropped_ratelimit: 0,
        };
        before.sources = vec![source("10.0.0.1", 0), source("10.0.0.2", 0)];
        now.sources = vec![source("10.0.0.2", 500), source("10.0.0.1", 1500)];
        let text = render_once(&now, Some((&before, 2.0)), 10);
        assert!(text.contains("allowlist 7"), "{text}");
        let first = text
            .lines()
            .position(|l| l.starts_with("10.0.0.1"))
            .unwrap();
        let second = text
            .lines()
            .position(|l| l.starts_with("10.0.0.2"))
            .unwrap();
        assert!(first < second, "busiest source first:\n{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("10.0.0.1") && l.contains("750")),
            "{text}"
        );
    }

    #[test]
    fn pipeline_lines_sum_over_labels_and_skip_per_source_series() {
        let body = "# HELP x\nsluice_received_total{proto=\"udp\"} 5\nsluice_received_total{proto=\"tcp\"} 7\n\
                    sluice_xdp_source_packets_total{source=\"1.2.3.4\"} 9\nother_metric 1\n";
        assert_eq!(
            pipeline_lines(body),
            vec![("sluice_received_total".to_string(), 12.0)]
        );
    }
}
