//! A value that `systemctl reload` replaces while readers use it: a source's allowlist, a
//! credential. Readers take the value (an `Arc`, cheap to hold across a request) and its
//! generation, and tell by one atomic load of the generation whether it changed since.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Debug)]
pub struct Live<T> {
    current: RwLock<Arc<T>>,
    /// Bumped at each replacement, under the write lock.
    generation: AtomicU64,
}

impl<T> Live<T> {
    pub fn new(value: T) -> Live<T> {
        Live {
            current: RwLock::new(Arc::new(value)),
            generation: AtomicU64::new(0),
        }
    }

    /// The value in use.
    pub fn get(&self) -> Arc<T> {
        self.snapshot().0
    }

    /// The value in use and its generation, as one consistent pair.
    pub fn snapshot(&self) -> (Arc<T>, u64) {
        // A writer only swaps an `Arc`: it cannot panic holding the lock, so a poisoned lock
        // still holds a whole value.
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        (current.clone(), self.generation.load(Ordering::Acquire))
    }

    /// Replacements so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl<T: PartialEq> Live<T> {
    /// Puts `value` in place; false (and nothing done) when it equals the value in place.
    pub fn replace(&self, value: T) -> bool {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if **current == value {
            return false;
        }
        *current = Arc::new(value);
        // Release: a reader that sees the new generation then reads the new value.
        self.generation.fetch_add(1, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_is_seen_once_and_an_equal_value_is_no_change() {
        let live = Live::new(1);
        let (held, generation) = live.snapshot();
        assert_eq!((*held, generation), (1, 0));
        assert!(!live.replace(1));
        assert_eq!(live.generation(), 0);
        assert!(live.replace(2));
        assert_eq!((*live.get(), live.generation()), (2, 1));
        assert_eq!(*held, 1, "a holder keeps what it took");
    }
}
