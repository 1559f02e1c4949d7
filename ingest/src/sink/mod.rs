//! Sinks: where batches go. Each sink is a folder with its config, logic and tests.

pub mod file;
