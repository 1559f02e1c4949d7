//! Sinks: where batches go. Each sink is a folder with its config, logic and tests.
//!
//! Contract: the pipeline hands a sink a [`Batch`] (mapped events in the sink's schema, one JSON
//! value per line, uncompressed; inside the per-event envelope its [`Envelope`] names). The sink
//! answers with a [`Delivery`]; only `Delivered` lets the batch leave the spool.

pub mod azure_logs_ingestion;
pub mod dead_letter;
pub mod elasticsearch;
pub mod file;
pub mod http;
pub mod replay;
pub mod runtime;
pub mod secret;
pub mod sekoia;
pub mod splunk_hec;

use std::time::Duration;

use crate::event::Event;
use crate::map::Schema;

/// How a worker writes each event into a sink's batch (not to be confused with the message
/// framing of stream sources, `crate::frame::Framing`). Most sinks take the mapped row as is;
/// some services want per-event metadata beside it that only the parsed event has (its time,
/// its host), and the sink sees only the spooled bytes: the worker writes the service's
/// per-event envelope around the row, straight into the batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// The row of the sink's schema.
    Row,
    /// A Splunk HEC envelope without the sink's configured keys (see
    /// [`splunk_hec::write_envelope`]); `sender_as_host` when the sink configures no `host`.
    SplunkHec { sender_as_host: bool },
    /// An Elasticsearch document: the row with `@timestamp` (see
    /// [`elasticsearch::write_document`]).
    Elasticsearch,
}

impl Envelope {
    /// Appends `event` as one JSON value (no newline).
    #[inline]
    pub fn write(self, schema: Schema, event: &Event<'_>, out: &mut Vec<u8>) {
        match self {
            Envelope::Row => crate::map::write(schema, event, out),
            Envelope::SplunkHec { sender_as_host } => {
                splunk_hec::write_envelope(schema, event, sender_as_host, out)
            }
            Envelope::Elasticsearch => elasticsearch::write_document(schema, event, out),
        }
    }
}

/// Mapped events for one sink: NDJSON, uncompressed.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Number of events (lines) in `ndjson`.
    pub events: u64,
    pub ndjson: Vec<u8>,
}

/// The outcome of one delivery attempt.
#[derive(Debug)]
pub enum Delivery {
    Delivered,
    /// Try again later (5xx, 429, network error); `after` honours `Retry-After`.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Cannot succeed (400, 401, 403, 413 at one event): goes to the dead-letter directory.
    Reject {
        status: Option<u16>,
        reason: String,
        response_body: String,
    },
    /// Part of the batch was accepted (the sink split it, or the service answered per event):
    /// `retry` still has to go (after `after`), each of `rejected` goes to the dead-letter
    /// directory. Nothing accepted is in either.
    Partial {
        retry: Option<Batch>,
        after: Option<Duration>,
        reason: String,
        rejected: Vec<Rejected>,
    },
}

/// Events the service refused for good, with its answer.
#[derive(Debug)]
pub struct Rejected {
    pub batch: Batch,
    pub status: Option<u16>,
    pub reason: String,
    pub response_body: String,
}

impl Batch {
    /// The non-empty lines of `ndjson`, one per event.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.ndjson.split(|&b| b == b'\n').filter(|l| !l.is_empty())
    }

    /// Builds a batch from event lines (each one JSON value, no newline inside).
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Batch {
        let mut batch = Batch::default();
        for line in lines {
            batch.ndjson.extend_from_slice(line);
            batch.ndjson.push(b'\n');
            batch.events += 1;
        }
        batch
    }
}

/// A destination for batches. Implementations must be safe to call concurrently up to the
/// sink's configured concurrency.
pub trait Sink: Send + Sync {
    fn name(&self) -> &str;
    fn deliver(&self, batch: &Batch) -> impl std::future::Future<Output = Delivery> + Send;
    /// The credentials the sink sends, for `systemctl reload` to read again.
    fn credentials(&self) -> Vec<std::sync::Arc<dyn crate::config::credential::Renew>> {
        Vec::new()
    }
}
