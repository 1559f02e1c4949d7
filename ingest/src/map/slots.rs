//! A set of small numbers for one output row: the column or field-name slots a mapper has
//! written so far (a CEF record may name one field under two keys, and a JSON object must
//! not repeat a name). A few words on the stack, nothing allocated per event.

/// Slots `0..SlotSet::<WORDS>::CAPACITY`.
#[derive(Clone, Copy)]
pub(crate) struct SlotSet<const WORDS: usize>([u64; WORDS]);

impl<const WORDS: usize> SlotSet<WORDS> {
    /// How many slots a set holds; table builders check their slot numbers against it.
    pub(crate) const CAPACITY: usize = 64 * WORDS;

    pub(crate) fn new() -> Self {
        SlotSet([0; WORDS])
    }

    #[inline(always)]
    pub(crate) fn contains(&self, slot: usize) -> bool {
        self.0[slot / 64] & (1u64 << (slot % 64)) != 0
    }

    /// Adds `slot`; false if it was already there.
    #[inline(always)]
    pub(crate) fn insert(&mut self, slot: usize) -> bool {
        let fresh = !self.contains(slot);
        self.0[slot / 64] |= 1u64 << (slot % 64);
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_is_its_own_bit() {
        let mut set = SlotSet::<2>::new();
        for slot in [0, 1, 63, 64, 127] {
            assert!(!set.contains(slot));
            assert!(set.insert(slot), "{slot}");
            assert!(set.contains(slot));
            assert!(!set.insert(slot), "{slot} twice");
        }
        assert!(!set.contains(2) && !set.contains(65) && !set.contains(126));
        assert_eq!(SlotSet::<2>::CAPACITY, 128);
    }
}
