//! Commit acknowledgements: how a source learns that the events it handed over are durably
//! committed (spooled) by every sink they were routed to.
//!
//! A source that needs it (the Darktrace API poller persists its checkpoint only after the
//! events are safe) puts an [`AckToken`] on its [`crate::net::FrameBatch`]. The worker attaches a
//! clone to every per-sink batch that receives at least one of those events; the sink stage
//! drops its clone once the batch is in the spool, or marks it failed first when the spool
//! refused it. When the last clone is gone the callback runs exactly once, on whichever
//! pipeline thread dropped it, with [`AckOutcome::Committed`] or [`AckOutcome::Failed`].
//! Events that no sink takes (routing) need no commit, so they never hold the token up.
//!
//! Socket readers leave the token `None`: the hot path pays one `Option` check per sink batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What happened to every event of the batch that carried the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// Every sink that took events from the batch has them in its spool.
    Committed,
    /// At least one sink could not take them (spool refused, delivery threads gone).
    Failed,
}

type Callback = Box<dyn FnOnce(AckOutcome) + Send>;

struct AckState {
    failed: AtomicBool,
    /// Behind a mutex only so the state is `Sync` (the callback is `Send`, not `Sync`); it is
    /// taken once, in `drop`.
    on_done: Mutex<Option<Callback>>,
}

impl Drop for AckState {
    fn drop(&mut self) {
        let callback = self
            .on_done
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(callback) = callback {
            let outcome = if *self.failed.get_mut() {
                AckOutcome::Failed
            } else {
                AckOutcome::Committed
            };
            callback(outcome);
        }
    }
}

/// A shared handle; the callback runs when the last clone is dropped.
#[derive(Clone)]
pub struct AckToken(Arc<AckState>);

impl AckToken {
    pub fn new(on_done: impl FnOnce(AckOutcome) + Send + 'static) -> AckToken {
        AckToken(Arc::new(AckState {
            failed: AtomicBool::new(false),
            on_done: Mutex::new(Some(Box::new(on_done))),
        }))
    }

    /// Marks the events as not committed; the callback will see [`AckOutcome::Failed`].
    pub fn fail(&self) {
        self.0.failed.store(true, Ordering::Release);
    }

    /// True when both handles belong to the same batch.
    pub fn same(&self, other: &AckToken) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        // A clone released while its thread unwinds from a panic (a worker's parser or mapper,
        // a sink thread) belongs to a batch whose events may never have reached the spool:
        // reporting it committed would let a source's checkpoint skip them.
        if std::thread::panicking() {
            self.fail();
        }
    }
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckToken")
            .field("holders", &Arc::strong_count(&self.0))
            .field("failed", &self.0.failed.load(Ordering::Relaxed))
            .finish()
    }
}

/// Adds `token` to `acks` unless the last entry is already the same batch's token: consecutive
/// events of one batch share one clone.
pub fn attach(acks: &mut Vec<AckToken>, token: &AckToken) {
    if !acks.last().is_some_and(|last| last.same(token)) {
        acks.push(token.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn fires_once_when_the_last_clone_goes() {
        let (tx, rx) = mpsc::channel();
        let token = AckToken::new(move |o| tx.send(o).unwrap());
        let a = token.clone();
        let b = token.clone();
        drop(token);
        drop(a);
        assert!(rx.try_recv().is_err(), "fired while a clone was held");
        drop(b);
        assert_eq!(rx.try_recv().unwrap(), AckOutcome::Committed);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn one_failure_fails_the_batch() {
        let (tx, rx) = mpsc::channel();
        let token = AckToken::new(move |o| tx.send(o).unwrap());
        let held_by_sink = token.clone();
        let other = token.clone();
        drop(token);
        held_by_sink.fail();
        drop(held_by_sink);
        drop(other);
        assert_eq!(rx.recv().unwrap(), AckOutcome::Failed);
    }

    #[test]
    fn a_clone_dropped_by_a_panicking_thread_fails_the_batch() {
        let (tx, rx) = mpsc::channel();
        let token = AckToken::new(move |o| tx.send(o).unwrap());
        let held_by_worker = token.clone();
        let worker = std::thread::spawn(move || {
            let _events = held_by_worker;
            panic!("a mapper bug");
        });
        assert!(worker.join().is_err());
        drop(token);
        assert_eq!(rx.recv().unwrap(), AckOutcome::Failed);
    }

    #[test]
    fn attach_keeps_one_clone_per_run_of_events() {
        let t1 = AckToken::new(|_| {});
        let t2 = AckToken::new(|_| {});
        let mut acks = Vec::new();
        for t in [&t1, &t1, &t2, &t2, &t1] {
            attach(&mut acks, t);
        }
        assert_eq!(acks.len(), 3);
    }
}
