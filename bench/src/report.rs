//! Medians, ratios to the drain baseline of the same repetition, a markdown table and PNG plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

use crate::compare::{Offered, Receiver, RunResult};
use crate::send::Proto;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub workload: String,
    pub proto: String,
    pub offered: Offered,
    pub receiver: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub workload: String,
    pub proto: String,
    pub offered: Offered,
    pub receiver: String,
    pub runs: usize,
    pub failed: usize,
    pub send_rate: f64,
    pub delivered_percent: f64,
    pub delivered_rate: f64,
    pub cpu_per_million: Option<f64>,
    pub ratio_to_drain: Option<f64>,
    pub peak_rss_mib: f64,
    pub kernel_drops: f64,
    /// (rows checked, rows with errors, wrong fields) summed over repeats.
    pub field_rows: Option<(u64, u64, u64)>,
    pub field_examples: Vec<String>,
    pub error: Option<String>,
}

pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

const LIMIT_NAME: &str = "limit: drain + zstd";

pub fn summarise(results: &[RunResult]) -> Vec<Summary> {
    // Drain CPU-s/M per (repeat, workload, proto, offered): the same-repetition baseline.
    let mut drain: BTreeMap<(usize, String, String, Offered), f64> = BTreeMap::new();
    for r in results
        .iter()
        .filter(|r| r.receiver == Receiver::Drain && r.error.is_none())
    {
        if let Some(c) = r.cpu_per_million() {
            drain.insert(
                (r.repeat, r.workload.clone(), r.proto.to_string(), r.offered),
                c,
            );
        }
    }
    let mut groups: BTreeMap<GroupKey, Vec<(RunResult, Option<f64>)>> = BTreeMap::new();
    for r in results {
        let key = GroupKey {
            workload: r.workload.clone(),
            proto: r.proto.to_string(),
            offered: r.offered,
            receiver: r.receiver.name().to_string(),
        };
        let base = drain
            .get(&(r.repeat, r.workload.clone(), r.proto.to_string(), r.offered))
            .copied();
        groups
            .entry(key.clone())
            .or_default()
            .push((r.clone(), base));
        // The limit including compression: drain plus standalone zstd of Sluice's output bytes.
        if let (Some(zstd), Some(base)) = (r.standalone_zstd_cpu_secs, base)
            && r.delivered > 0
        {
            let mut limit = r.clone();
            limit.cpu_secs = (base + zstd / r.delivered as f64 * 1e6) * r.delivered as f64 / 1e6;
            limit.peak_rss_kib = 0;
            limit.fields = None;
            groups
                .entry(GroupKey {
                    receiver: LIMIT_NAME.into(),
                    ..key
                })
                .or_default()
                .push((limit, Some(base)));
        }
    }
    groups
        .into_iter()
        .map(|(key, runs)| {
            let ok: Vec<&(RunResult, Option<f64>)> =
                runs.iter().filter(|(r, _)| r.error.is_none()).collect();
            let collect = |f: &dyn Fn(&RunResult, Option<f64>) -> Option<f64>| -> Option<f64> {
                let mut v: Vec<f64> = ok.iter().filter_map(|(r, b)| f(r, *b)).collect();
                median(&mut v)
            };
            let fields = ok.iter().filter_map(|(r, _)| r.fields.as_ref()).fold(
                None,
                |acc: Option<(u64, u64, u64)>, f| {
                    let (a, b, c) = acc.unwrap_or_default();
                    Some((a + f.rows, b + f.rows_with_errors, c + f.field_errors))
                },
            );
            let mut examples: Vec<String> = Vec::new();
            for f in ok.iter().filter_map(|(r, _)| r.fields.as_ref()) {
                for e in &f.examples {
                    if !examples.contains(e) && examples.len() < 4 {
                        examples.push(e.clone());
                    }
                }
            }
            Summary {
                workload: key.workload,
                proto: key.proto,
                offered: key.offered,
                receiver: key.receiver,
                runs: ok.len(),
                failed: runs.len() - ok.len(),
                send_rate: collect(&|r, _| Some(r.send_rate)).unwrap_or(0.0),
                delivered_percent: collect(&|r, _| {
                    (r.sent > 0).then(|| 100.0 * r.delivered as f64 / r.sent as f64)
                })
                .unwrap_or(0.0),
                delivered_rate: collect(&|r, _| Some(r.delivered_rate())).unwrap_or(0.0),
                cpu_per_million: collect(&|r, _| r.cpu_per_million()),
                ratio_to_drain: collect(&|r, b| {
                    Some(r.cpu_per_million()? / b.filter(|b| *b > 0.0)?)
                }),
                peak_rss_mib: collect(&|r, _| Some(r.peak_rss_kib as f64 / 1024.0)).unwrap_or(0.0),
                kernel_drops: collect(&|r, _| Some(r.kernel_rcvbuf_drops as f64)).unwrap_or(0.0),
                field_rows: fields,
                field_examples: examples,
                error: runs.iter().find_map(|(r, _)| r.error.clone()),
            }
        })
        .collect()
}

fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    value
        .map(|v| format!("{v:.decimals$}"))
        .unwrap_or_else(|| "–".into())
}

pub struct ReportContext {
    pub date: String,
    pub machine: String,
    pub repeats: usize,
    pub command: String,
    pub versions: Vec<(String, String)>,
    pub workloads: Vec<(String, String)>,
    pub receivers: Vec<Receiver>,
    pub plots: Vec<String>,
}

pub fn markdown(summaries: &[Summary], ctx: &ReportContext) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Throughput comparison — {} on {}\n",
        ctx.date, ctx.machine
    );
    let _ = writeln!(
        md,
        "Medians of {} repetition(s); receivers alternate within each point; receiver pinned to one core, \
         sender to the other. CPU-s / M = receiver user+system CPU seconds per million delivered messages \
         (from `/proc/<pid>/stat`, shutdown flush included); × drain = ratio to the drain-only receiver of the \
         same repetition. Field errors: parsed CEF output rows checked against the generated fields \
         (rows with errors / rows checked).\n",
        ctx.repeats
    );
    let _ = writeln!(md, "Command: `{}`\n", ctx.command);
    for (name, what) in &ctx.workloads {
        let _ = writeln!(md, "- workload `{name}`: {what}");
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "| workload | proto | offered msg/s | receiver | sent msg/s | delivered % | delivered msg/s | CPU-s / M | × drain | peak RSS MiB | field errors |"
    );
    let _ = writeln!(md, "|---|---|---|---|--:|--:|--:|--:|--:|--:|---|");
    for s in summaries {
        let fields = match s.field_rows {
            Some((rows, bad, _)) => format!("{bad}/{rows}"),
            None => "n/a".into(),
        };
        let failed = if s.failed > 0 {
            format!(" ({} failed)", s.failed)
        } else {
            String::new()
        };
        if s.runs == 0 {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | failed: {} | | | | | | |",
                s.workload,
                s.proto,
                s.offered,
                s.receiver,
                s.error.as_deref().unwrap_or("?").replace('|', "/")
            );
            continue;
        }
        let rss = if s.peak_rss_mib > 0.0 {
            format!("{:.1}", s.peak_rss_mib)
        } else {
            "–".into()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {}{} | {:.0} | {:.1} | {:.0} | {} | {} | {} | {} |",
            s.workload,
            s.proto,
            s.offered,
            s.receiver,
            failed,
            s.send_rate,
            s.delivered_percent,
            s.delivered_rate,
            fmt_opt(s.cpu_per_million, 2),
            fmt_opt(s.ratio_to_drain, 1),
            rss,
            fields
        );
    }
    let examples: Vec<&Summary> = summaries
        .iter()
        .filter(|s| !s.field_examples.is_empty())
        .collect();
    if !examples.is_empty() {
        let _ = writeln!(md, "\nField error examples:\n");
        let mut seen = std::collections::HashSet::new();
        for s in examples {
            if seen.insert(&s.receiver) {
                let _ = writeln!(
                    md,
                    "- {}: {}",
                    s.receiver,
                    s.field_examples.join("; ").replace('|', "/")
                );
            }
        }
    }
    let _ = writeln!(md, "\nReceivers:\n");
    for r in &ctx.receivers {
        let _ = writeln!(md, "- `{}`: {}", r.name(), r.what());
    }
    if summaries.iter().any(|s| s.receiver == LIMIT_NAME) {
        let _ = writeln!(
            md,
            "- `{LIMIT_NAME}`: drain CPU-s/M plus the CPU to zstd-compress sluice-csl's output files \
             standalone (same repetition)"
        );
    }
    if !ctx.versions.is_empty() {
        let _ = writeln!(
            md,
            "\nVersions: {}",
            ctx.versions
                .iter()
                .map(|(n, v)| format!("{n} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for plot in &ctx.plots {
        let _ = writeln!(md, "\n![{plot}]({plot})");
    }
    md
}

fn font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let candidates = [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            ];
            let bytes = candidates
                .iter()
                .find_map(|p| std::fs::read(p).ok())
                .ok_or("no DejaVuSans.ttf found (apt-get install fonts-dejavu-core)")?;
            plotters::style::register_font(
                "sans-serif",
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .map_err(|_| "DejaVuSans.ttf is not a valid font".to_string())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

const COLORS: [RGBColor; 9] = [
    RGBColor(0, 0, 0),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Delivered msgs/s against the measured offered rate, one line per receiver.
pub fn plot_delivered(
    summaries: &[Summary],
    workload: &str,
    proto: &str,
    path: &Path,
) -> anyhow::Result<()> {
    font()?;
    let mut series: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for s in summaries
        .iter()
        .filter(|s| s.workload == workload && s.proto == proto && s.runs > 0)
    {
        if s.receiver == LIMIT_NAME {
            continue;
        }
        series
            .entry(&s.receiver)
            .or_default()
            .push((s.send_rate / 1000.0, s.delivered_rate / 1000.0));
    }
    let max_x = series.values().flatten().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let max_y = series.values().flatten().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Delivered vs offered — {workload}, {proto}"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("offered (sent) k msgs/s")
        .y_desc("delivered k msgs/s")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (name, mut points)) in series.into_iter().enumerate() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// CPU-s per million per receiver at the highest offered rate, one bar per protocol.
pub fn plot_cpu(summaries: &[Summary], workload: &str, path: &Path) -> anyhow::Result<()> {
    font()?;
    let mut receivers: Vec<String> = Vec::new();
    let mut bars: Vec<(usize, usize, f64)> = Vec::new();
    let protos = ["udp", "tcp"];
    for s in summaries
        .iter()
        .filter(|s| s.workload == workload && s.runs > 0)
    {
        let top = summaries
            .iter()
            .filter(|o| {
                o.workload == workload
                    && o.proto == s.proto
                    && o.receiver == s.receiver
                    && o.runs > 0
            })
            .map(|o| o.offered)
            .max();
        if Some(s.offered) != top {
            continue;
        }
        let Some(cpu) = s.cpu_per_million else {
            continue;
        };
        let index = match receivers.iter().position(|r| *r == s.receiver) {
            Some(i) => i,
            None => {
                receivers.push(s.receiver.clone());
                receivers.len() - 1
            }
        };
        let proto = protos.iter().position(|p| *p == s.proto).unwrap_or(0);
        bars.push((index, proto, cpu));
    }
    let max_y = bars.iter().map(|b| b.2).fold(0.1, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = receivers.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("CPU-seconds per million messages (lower is better) — {workload}"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(70)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n as f64, 0.0..max_y)?;
    let names = receivers.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("CPU-s / M msgs")
        .label_style(("sans-serif", 13))
        .draw()?;
    for (p, proto) in protos.iter().enumerate() {
        let color = COLORS[p + 1];
        chart
            .draw_series(bars.iter().filter(|b| b.1 == p).map(|&(i, _, v)| {
                let x0 = i as f64 + 0.1 + 0.4 * p as f64;
                Rectangle::new([(x0, 0.0), (x0 + 0.38, v)], color.filled())
            }))?
            .label(format!("{proto} (highest offered rate)"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
        chart.draw_series(bars.iter().filter(|b| b.1 == p).map(|&(i, _, v)| {
            let x0 = i as f64 + 0.1 + 0.4 * p as f64;
            Text::new(
                format!("{v:.2}"),
                (x0, v + max_y * 0.01),
                ("sans-serif", 12),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes results.json, summary.md and the plots into `dir`; returns the markdown and plot paths.
pub fn write_all(
    results: &[RunResult],
    dir: &Path,
    ctx: &mut ReportContext,
) -> anyhow::Result<(String, Vec<PathBuf>)> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(results)?,
    )?;
    let summaries = summarise(results);
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(&summaries)?,
    )?;
    let mut plots = Vec::new();
    let workloads: Vec<String> = ctx.workloads.iter().map(|(n, _)| n.clone()).collect();
    for workload in &workloads {
        for proto in [Proto::Udp, Proto::Tcp] {
            let proto = proto.to_string();
            let points = summaries
                .iter()
                .filter(|s| s.workload == *workload && s.proto == proto && s.runs > 0);
            let distinct_rates: std::collections::BTreeSet<Offered> =
                points.map(|s| s.offered).collect();
            if distinct_rates.len() < 2 {
                continue;
            }
            let name = format!("delivered-{workload}-{proto}.png");
            match plot_delivered(&summaries, workload, &proto, &dir.join(&name)) {
                Ok(()) => plots.push(name),
                Err(err) => eprintln!("warning: plot {name}: {err:#}"),
            }
        }
        let name = format!("cpu-{workload}.png");
        match plot_cpu(&summaries, workload, &dir.join(&name)) {
            Ok(()) => plots.push(name),
            Err(err) => eprintln!("warning: plot {name}: {err:#}"),
        }
    }
    ctx.plots = plots.clone();
    let md = markdown(&summaries, ctx);
    std::fs::write(dir.join("summary.md"), &md)?;
    Ok((md, plots.into_iter().map(|p| dir.join(p)).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
