//! sluice-bench: deterministic Darktrace-shaped corpus, load generator, drain-only receiver,
//! and the side-by-side comparison with rsyslog and syslog-ng.

pub mod compare;
pub mod corpus;
pub mod drain;
pub mod fieldcheck;
pub mod procstat;
pub mod report;
pub mod send;
