//! Sinks: where batches go. Each sink is a folder with its config, logic and tests.
//!
//! Contract: the pipeline hands a sink a [`Batch`] (mapped events in the sink's schema, one JSON
//! value per line, uncompressed). The sink answers with a [`Delivery`]; only `Delivered` lets
//! the batch leave the spool.

pub mod file;

use std::time::Duration;

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
    Retry { after: Option<Duration>, reason: String },
    /// Cannot succeed (400, 401, 403, 413 at one event): goes to the dead-letter directory.
    Reject { status: Option<u16>, reason: String, response_body: String },
}

/// A destination for batches. Implementations must be safe to call concurrently up to the
/// sink's configured concurrency.
pub trait Sink: Send + Sync {
    fn name(&self) -> &str;
    fn deliver(&self, batch: &Batch) -> impl std::future::Future<Output = Delivery> + Send;
}
