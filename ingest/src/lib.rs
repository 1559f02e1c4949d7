//! Sluice: syslog ingestion for security alerts.
//!
//! Modules are laid out in pipeline order: configuration, the XDP loader, socket readers,
//! framing, parsing, the internal event, schema mappings, batching, spooling and sinks.
//! The hot path (net → frame → parse → map → batch) is kept apart from the control path
//! (config, metrics endpoint, CLI).

pub mod config;
pub mod xdp;
pub mod net;
pub mod frame;
pub mod parse;
pub mod event;
pub mod map;
pub mod pipeline;
pub mod batch;
pub mod compress;
pub mod spool;
pub mod sink;
pub mod source;
pub mod metrics;
pub mod cli;
