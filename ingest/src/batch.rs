//! Batching of mapped events per sink.
