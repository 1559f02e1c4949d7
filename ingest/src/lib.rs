//! Sluice: syslog ingestion for security alerts.
//!
//! Modules are laid out in pipeline order: configuration, the XDP loader, socket readers,
//! framing, parsing, the internal event, schema mappings, batching, spooling and sinks.
//! The hot path (net → frame → parse → map → batch) is kept apart from the control path
//! (config, metrics endpoint, CLI).

pub mod batch;
pub mod cli;
pub mod compress;
pub mod config;
pub mod event;
pub mod frame;
pub mod log_every;
pub mod map;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod parse;
pub mod pipeline;
pub mod privileges;
pub mod sink;
pub mod source;
pub mod spool;
pub mod xdp;
