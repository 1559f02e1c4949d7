//! Ids of events the checkpoint cannot cover: forwarded events without a usable time, and
//! events dated after the request that fetched them (they do not move the checkpoint, see
//! [`super::checkpoint::select`]). The appliance returns both kinds again on later
//! polls; their ids are remembered here so they are not forwarded again.
//!
//! Bounded (`max_remembered_ids` per endpoint): when full, the id remembered first is
//! forgotten, and that event is forwarded once more if the appliance still returns it. Kept in
//! memory only: after a restart each such event is forwarded once more.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ForwardedIds {
    capacity: usize,
    /// Shared with `order`: each id's text is held once.
    set: HashSet<Arc<str>>,
    /// Insertion order, for forgetting the oldest first.
    order: VecDeque<Arc<str>>,
}

impl ForwardedIds {
    pub fn new(capacity: usize) -> ForwardedIds {
        ForwardedIds {
            capacity: capacity.max(1),
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    pub fn insert(&mut self, id: String) {
        if self.set.contains(id.as_str()) {
            return;
        }
        while self.order.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.set.remove(&old);
                }
                None => break,
            }
        }
        let id: Arc<str> = id.into();
        self.order.push_back(id.clone());
        self.set.insert(id);
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_when_full() {
        let mut f = ForwardedIds::new(2);
        f.insert("a".into());
        f.insert("b".into());
        f.insert("a".into());
        assert_eq!(f.len(), 2);
        f.insert("c".into());
        assert!(!f.contains("a") && f.contains("b") && f.contains("c"));
        assert_eq!(f.len(), 2);
    }
}
