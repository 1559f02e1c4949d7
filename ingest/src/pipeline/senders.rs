//! A source's `expected_senders`: the appliances that must keep sending to it. A source on
//! port 514 usually hears several (Darktrace masters and probes, firewalls); its own silence
//! alert cannot tell when one of them stops. Each expected sender gets
//! `sluice_sender_messages_total{source,sender}` and
//! `sluice_sender_last_seen_timestamp_seconds{source,sender}` (start-up time until it is first
//! heard), so that an alert can name the one that went quiet. Only the listed addresses get
//! series: the cardinality is the operator's choice, not the network's.
//!
//! Workers tally per reader batch and publish once per batch; a frame from an unlisted peer
//! costs one comparison per listed sender (a handful).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use metrics::{Counter, Gauge};

/// The most addresses one source may list.
pub const MAX_EXPECTED_SENDERS: usize = 256;

/// A source's `expected_senders`, checked: addresses, each once, not too many.
pub fn parse(text: &[String]) -> Result<Vec<IpAddr>, String> {
    let senders = text
        .iter()
        .map(|t| {
            t.parse::<IpAddr>().map_err(|_| {
                format!("`{t}` is not an IP address (list single addresses; `allow` takes CIDRs)")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if senders.len() > MAX_EXPECTED_SENDERS {
        return Err(format!(
            "{} addresses; at most {MAX_EXPECTED_SENDERS} (each is a metric series)",
            senders.len()
        ));
    }
    for (i, a) in senders.iter().enumerate() {
        if senders[..i]
            .iter()
            .any(|b| b.to_canonical() == a.to_canonical())
        {
            return Err(format!("{a} is listed twice"));
        }
    }
    Ok(senders)
}

/// The expected senders of one source, shared by the workers.
pub struct ExpectedSenders {
    /// Canonical (an IPv4-mapped IPv6 peer of a dual-stack socket is its IPv4 address).
    addresses: Vec<IpAddr>,
    messages: Vec<Counter>,
    /// Unix seconds of the latest message from each, kept as the maximum over the workers.
    last_seen: Vec<(AtomicI64, Gauge)>,
}

impl ExpectedSenders {
    /// Registers the series of `source`'s `senders` (none: `None`), present from start-up:
    /// counts at 0, last seen at `started` (Unix seconds).
    pub fn register(source: &str, senders: &[IpAddr], started: i64) -> Option<Arc<Self>> {
        if senders.is_empty() {
            return None;
        }
        let addresses: Vec<IpAddr> = senders.iter().map(IpAddr::to_canonical).collect();
        let labels = |a: &IpAddr| [("source", source.to_string()), ("sender", a.to_string())];
        let messages = addresses
            .iter()
            .map(|a| {
                let counter = metrics::counter!(crate::metrics::SENDER_MESSAGES, &labels(a));
                counter.absolute(0);
                counter
            })
            .collect();
        let last_seen = addresses
            .iter()
            .map(|a| {
                let gauge = metrics::gauge!(crate::metrics::SENDER_LAST_SEEN, &labels(a));
                gauge.set(started as f64);
                (AtomicI64::new(started), gauge)
            })
            .collect();
        Some(Arc::new(ExpectedSenders {
            addresses,
            messages,
            last_seen,
        }))
    }

    /// Publishes a batch's tally (`counts[i]` messages from sender `i`) received at `at`
    /// (Unix seconds); zeroes it.
    fn publish(&self, counts: &mut [u64], at: i64) {
        for (i, n) in counts.iter_mut().enumerate() {
            if *n == 0 {
                continue;
            }
            self.messages[i].increment(std::mem::take(n));
            let (latest, gauge) = &self.last_seen[i];
            // Workers publish out of order: the gauge never goes back.
            let newest = latest.fetch_max(at, Ordering::Relaxed).max(at);
            gauge.set(newest as f64);
        }
    }
}

/// A worker's count of one reader batch's messages per expected sender.
#[derive(Default)]
pub struct Tally {
    counts: Vec<u64>,
    /// The index the previous frame matched: a batch usually comes from one sender.
    last: usize,
}

impl Tally {
    /// Starts a batch of a source with `senders`.
    pub fn begin(&mut self, senders: &ExpectedSenders) {
        self.counts.clear();
        self.counts.resize(senders.addresses.len(), 0);
    }

    #[inline]
    pub fn count(&mut self, senders: &ExpectedSenders, peer: Option<std::net::SocketAddr>) {
        let Some(peer) = peer else { return };
        let ip = peer.ip().to_canonical();
        if senders.addresses.get(self.last) == Some(&ip) {
            self.counts[self.last] += 1;
        } else if let Some(i) = senders.addresses.iter().position(|a| *a == ip) {
            self.counts[i] += 1;
            self.last = i;
        }
    }

    /// Ends the batch: publishes what it counted.
    pub fn publish(&mut self, senders: &ExpectedSenders, at_unix_secs: i64) {
        senders.publish(&mut self.counts, at_unix_secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_bounds_the_list_and_refuses_duplicates() {
        let text = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse(&text(&["10.0.0.1", "fd00::2"])).unwrap(),
            [ip("10.0.0.1"), ip("fd00::2")]
        );
        assert_eq!(
            parse(&text(&["10.0.0.1", "::ffff:10.0.0.1"])).unwrap_err(),
            "::ffff:10.0.0.1 is listed twice"
        );
        let many: Vec<String> = (0..=MAX_EXPECTED_SENDERS as u32)
            .map(|i| std::net::Ipv4Addr::from(i).to_string())
            .collect();
        assert!(parse(&many).unwrap_err().contains("at most 256"));
    }

    #[test]
    fn counts_and_last_seen_per_sender() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let senders =
                ExpectedSenders::register("syslog", &[ip("10.0.0.1"), ip("10.0.0.2")], 1_000)
                    .unwrap();
            let mut tally = Tally::default();
            tally.begin(&senders);
            for peer in ["10.0.0.1:5000", "[::ffff:10.0.0.1]:5001", "10.0.0.9:5000"] {
                tally.count(&senders, Some(peer.parse().unwrap()));
            }
            tally.count(&senders, None);
            tally.publish(&senders, 2_000);
            // A worker publishing an older batch later does not move last-seen back.
            tally.begin(&senders);
            tally.count(&senders, Some("10.0.0.1:5000".parse().unwrap()));
            tally.publish(&senders, 1_500);
        });
        let text = handle.render();
        let get = |name: &str, sender: &str| -> f64 {
            let series = format!("{name}{{source=\"syslog\",sender=\"{sender}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .unwrap_or_else(|| panic!("{series} in {text}"))
                .parse()
                .unwrap()
        };
        assert_eq!(get(crate::metrics::SENDER_MESSAGES, "10.0.0.1"), 3.0);
        assert_eq!(get(crate::metrics::SENDER_MESSAGES, "10.0.0.2"), 0.0);
        assert_eq!(get(crate::metrics::SENDER_LAST_SEEN, "10.0.0.1"), 2_000.0);
        assert_eq!(get(crate::metrics::SENDER_LAST_SEEN, "10.0.0.2"), 1_000.0);
    }
}
