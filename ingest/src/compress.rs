//! Batch compression (zstd, gzip).
