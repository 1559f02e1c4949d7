//! Prometheus metrics: names and registration.
