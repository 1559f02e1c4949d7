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
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge};

use crate::config::live::Live;

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

/// One expected sender's series. Kept for the life of the process once registered: a sender
/// taken off the list and listed again goes on with its count.
struct SenderSeries {
    /// Canonical (an IPv4-mapped IPv6 peer of a dual-stack socket is its IPv4 address).
    address: IpAddr,
    messages: Counter,
    /// Unix seconds of the latest message, kept as the maximum over the workers.
    last_seen: AtomicI64,
    last_seen_gauge: Gauge,
    /// 1 while listed, 0 once a reload took it off: the exporter cannot remove the series of
    /// a sender no longer expected, so `SluiceSenderSilent` asks this.
    expected: Gauge,
}

impl SenderSeries {
    /// Moves last-seen to `at` unless it is later already: workers publish out of order, and
    /// the gauge never goes back.
    fn seen_at(&self, at: i64) {
        let newest = self.last_seen.fetch_max(at, Ordering::Relaxed).max(at);
        self.last_seen_gauge.set(newest as f64);
    }
}

/// The senders a source expects at one time: what a worker tallies a batch against.
pub struct SenderList {
    senders: Vec<Arc<SenderSeries>>,
}

/// Equal when the same addresses are listed in the same order: what a reload compares.
impl PartialEq for SenderList {
    fn eq(&self, other: &Self) -> bool {
        self.senders.len() == other.senders.len()
            && self
                .senders
                .iter()
                .zip(&other.senders)
                .all(|(a, b)| a.address == b.address)
    }
}

/// A source's `expected_senders`, shared by the workers and replaced by `systemctl reload`.
pub struct ExpectedSenders {
    source: Arc<str>,
    list: Live<SenderList>,
    /// Every sender listed since start-up, listed now or not.
    registered: Mutex<Vec<Arc<SenderSeries>>>,
}

impl ExpectedSenders {
    /// Registers the series of `source`'s `senders`, present from start-up: counts at 0, last
    /// seen at `started` (Unix seconds).
    pub fn register(source: &str, senders: &[IpAddr], started: i64) -> Arc<Self> {
        let expected = ExpectedSenders {
            source: Arc::from(source),
            list: Live::new(SenderList {
                senders: Vec::new(),
            }),
            registered: Mutex::new(Vec::new()),
        };
        expected.replace(senders, started);
        Arc::new(expected)
    }

    /// Makes `senders` the list (at `now`, Unix seconds). A sender listed before keeps its
    /// series as they are. One newly listed, or listed again, counts as last seen `now` unless
    /// it was heard later, so that the silence alert gives it its full hour. One taken off
    /// stays exported, with `sluice_sender_expected` 0. Returns whether the list changed.
    pub fn replace(&self, senders: &[IpAddr], now: i64) -> bool {
        let mut registered = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        let before = self.list.get();
        let mut listed = Vec::with_capacity(senders.len());
        for address in senders.iter().map(IpAddr::to_canonical) {
            let series = match registered.iter().find(|s| s.address == address) {
                Some(series) => series.clone(),
                None => {
                    let series = Arc::new(self.new_series(address));
                    registered.push(series.clone());
                    series
                }
            };
            if !before.senders.iter().any(|s| s.address == address) {
                series.seen_at(now);
                series.expected.set(1.0);
            }
            listed.push(series);
        }
        for gone in before
            .senders
            .iter()
            .filter(|s| !listed.iter().any(|l| l.address == s.address))
        {
            gone.expected.set(0.0);
        }
        self.list.replace(SenderList { senders: listed })
    }

    fn new_series(&self, address: IpAddr) -> SenderSeries {
        let labels = [
            ("source", self.source.to_string()),
            ("sender", address.to_string()),
        ];
        let messages = metrics::counter!(crate::metrics::SENDER_MESSAGES, &labels);
        messages.absolute(0);
        SenderSeries {
            address,
            messages,
            last_seen: AtomicI64::new(i64::MIN),
            last_seen_gauge: metrics::gauge!(crate::metrics::SENDER_LAST_SEEN, &labels),
            expected: metrics::gauge!(crate::metrics::SENDER_EXPECTED, &labels),
        }
    }
}

/// A worker's view of one source's expected senders: the list it tallies against, taken again
/// when a reload replaced it (one atomic load per batch tells).
pub struct SenderWatch {
    shared: Arc<ExpectedSenders>,
    list: Arc<SenderList>,
    generation: u64,
}

impl SenderWatch {
    pub fn new(shared: Arc<ExpectedSenders>) -> SenderWatch {
        let (list, generation) = shared.list.snapshot();
        SenderWatch {
            shared,
            list,
            generation,
        }
    }

    /// The list in use, or `None` when the source expects no one.
    #[inline]
    pub fn current(&mut self) -> Option<&SenderList> {
        if self.shared.list.generation() != self.generation {
            (self.list, self.generation) = self.shared.list.snapshot();
        }
        (!self.list.senders.is_empty()).then_some(&*self.list)
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
    pub fn begin(&mut self, senders: &SenderList) {
        self.counts.clear();
        self.counts.resize(senders.senders.len(), 0);
    }

    #[inline]
    pub fn count(&mut self, senders: &SenderList, peer: Option<std::net::SocketAddr>) {
        let Some(peer) = peer else { return };
        let ip = peer.ip().to_canonical();
        if senders.senders.get(self.last).map(|s| s.address) == Some(ip) {
            self.counts[self.last] += 1;
        } else if let Some(i) = senders.senders.iter().position(|s| s.address == ip) {
            self.counts[i] += 1;
            self.last = i;
        }
    }

    /// Ends the batch: publishes what it counted (received at `at_unix_secs`) and zeroes it.
    pub fn publish(&mut self, senders: &SenderList, at_unix_secs: i64) {
        for (series, n) in senders.senders.iter().zip(self.counts.iter_mut()) {
            if *n > 0 {
                series.messages.increment(std::mem::take(n));
                series.seen_at(at_unix_secs);
            }
        }
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
            let shared =
                ExpectedSenders::register("syslog", &[ip("10.0.0.1"), ip("10.0.0.2")], 1_000);
            let mut watch = SenderWatch::new(shared);
            let senders = watch.current().unwrap();
            let mut tally = Tally::default();
            tally.begin(senders);
            for peer in ["10.0.0.1:5000", "[::ffff:10.0.0.1]:5001", "10.0.0.9:5000"] {
                tally.count(senders, Some(peer.parse().unwrap()));
            }
            tally.count(senders, None);
            tally.publish(senders, 2_000);
            // A worker publishing an older batch later does not move last-seen back.
            tally.begin(senders);
            tally.count(senders, Some("10.0.0.1:5000".parse().unwrap()));
            tally.publish(senders, 1_500);
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
        assert_eq!(get(crate::metrics::SENDER_EXPECTED, "10.0.0.1"), 1.0);
    }

    /// What `systemctl reload` does to a source's list: kept senders keep their series, added
    /// ones start at the reload, removed ones are marked, and a worker sees the new list at its
    /// next batch.
    #[test]
    fn a_reload_replaces_the_list_and_keeps_the_series() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let get = |name: &str, sender: &str| -> Option<f64> {
            let text = handle.render();
            let series = format!("{name}{{source=\"syslog\",sender=\"{sender}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .map(|v| v.parse().unwrap())
        };
        let (messages, last_seen, expected) = (
            crate::metrics::SENDER_MESSAGES,
            crate::metrics::SENDER_LAST_SEEN,
            crate::metrics::SENDER_EXPECTED,
        );
        metrics::with_local_recorder(&recorder, || {
            let shared =
                ExpectedSenders::register("syslog", &[ip("10.0.0.1"), ip("10.0.0.2")], 1_000);
            let mut watch = SenderWatch::new(shared.clone());
            let mut tally = Tally::default();
            let mut send = |watch: &mut SenderWatch, peer: &str, at: i64| {
                let senders = watch.current().expect("a list");
                tally.begin(senders);
                tally.count(senders, Some(peer.parse().unwrap()));
                tally.publish(senders, at);
            };
            send(&mut watch, "10.0.0.1:514", 1_100);
            send(&mut watch, "10.0.0.2:514", 1_200);

            assert!(
                !shared.replace(&[ip("10.0.0.1"), ip("10.0.0.2")], 5_000),
                "same list"
            );
            assert!(shared.replace(&[ip("10.0.0.1"), ip("::ffff:10.0.0.3")], 5_000));
            // Kept: as it was. Added: listed at the reload. Removed: still there, not expected.
            assert_eq!(get(last_seen, "10.0.0.1"), Some(1_100.0));
            assert_eq!(get(messages, "10.0.0.3"), Some(0.0));
            assert_eq!(get(last_seen, "10.0.0.3"), Some(5_000.0));
            assert_eq!(get(expected, "10.0.0.3"), Some(1.0));
            assert_eq!(get(expected, "10.0.0.2"), Some(0.0));
            assert_eq!(get(expected, "10.0.0.1"), Some(1.0));

            // The worker's next batch counts against the new list.
            send(&mut watch, "10.0.0.3:514", 5_100);
            send(&mut watch, "10.0.0.2:514", 5_200);
            assert_eq!(get(messages, "10.0.0.3"), Some(1.0));
            assert_eq!(
                get(messages, "10.0.0.2"),
                Some(1.0),
                "not counted once off the list"
            );

            // Listed again: its count goes on; heard later than the reload, so last-seen stays.
            assert!(shared.replace(&[ip("10.0.0.2")], 1_150));
            assert_eq!(get(expected, "10.0.0.2"), Some(1.0));
            assert_eq!(get(last_seen, "10.0.0.2"), Some(1_200.0));
            send(&mut watch, "10.0.0.2:514", 6_000);
            assert_eq!(get(messages, "10.0.0.2"), Some(2.0));
            assert_eq!(get(expected, "10.0.0.1"), Some(0.0));

            // Emptied: the worker stops tallying.
            assert!(shared.replace(&[], 7_000));
            assert!(watch.current().is_none());
        });
    }
}
