//! Calls under way, by digest and scope asked: later callers for the same
//! key wait for the first one's answer instead of calling again.
//!
//! Every caller holds a [`Joined`] guard. The slot leaves the map when its
//! answer is in (so an error is never reused by later arrivals) or when the
//! last caller interested in it is gone — including callers whose future
//! was dropped mid-call, which would otherwise leave it in the map forever.
//! A dropped first caller hands the call to the next waiter
//! ([`OnceCell`]'s initialisation moves on to it).

use std::collections::HashMap;
use std::sync::Arc;

use auth_core::Digest;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

/// A slot's key: the key's digest and the scope asked.
pub(crate) type SlotKey = (Digest, Option<String>);

/// One call's answer, shared by everyone waiting for it.
pub(crate) type Slot<T> = Arc<OnceCell<T>>;

/// The calls under way.
#[derive(Debug)]
pub(crate) struct Inflight<T> {
    slots: Mutex<HashMap<SlotKey, Slot<T>>>,
}

impl<T> Inflight<T> {
    pub(crate) fn new() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Joins the call for `key`, starting a slot if none is under way.
    pub(crate) fn join(&self, key: SlotKey) -> Joined<'_, T> {
        // Every clone of a slot is made under this lock, and every guard
        // drops its clone under it: the count checked in `drop` is exact.
        let slot = Arc::clone(self.slots.lock().entry(key.clone()).or_default());
        Joined {
            inflight: self,
            key,
            slot: Some(slot),
        }
    }

    /// How many slots are held.
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().len()
    }
}

/// A caller's share of a slot; see the module docs.
#[derive(Debug)]
pub(crate) struct Joined<'a, T> {
    inflight: &'a Inflight<T>,
    key: SlotKey,
    slot: Option<Slot<T>>,
}

impl<T> Joined<'_, T> {
    /// The slot's cell.
    pub(crate) fn cell(&self) -> &OnceCell<T> {
        self.slot
            .as_deref()
            .expect("the slot is held until the guard drops")
    }

    /// The scope asked.
    pub(crate) fn scope(&self) -> Option<&str> {
        self.key.1.as_deref()
    }
}

impl<T> Drop for Joined<'_, T> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let mut slots = self.inflight.slots.lock();
        // Ours, and either answered or held by the map and us alone.
        let remove = slots.get(&self.key).is_some_and(|s| Arc::ptr_eq(s, &slot))
            && (slot.initialized() || Arc::strong_count(&slot) == 2);
        if remove {
            slots.remove(&self.key);
        }
        // Under the lock, so that the next guard's count is exact.
        drop(slot);
        drop(slots);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SlotKey {
        (Digest::of(&[n]), None)
    }

    #[test]
    fn the_last_one_out_removes_an_unanswered_slot() {
        let inflight = Inflight::<u8>::new();
        let a = inflight.join(key(1));
        let b = inflight.join(key(1));
        assert!(Arc::ptr_eq(
            a.slot.as_ref().unwrap(),
            b.slot.as_ref().unwrap()
        ));
        drop(a);
        assert_eq!(inflight.len(), 1, "b still waits");
        drop(b);
        assert_eq!(inflight.len(), 0);
    }

    #[test]
    fn an_answered_slot_leaves_at_once_and_newcomers_start_afresh() {
        let inflight = Inflight::<u8>::new();
        let a = inflight.join(key(1));
        let b = inflight.join(key(1));
        a.cell().set(7).unwrap();
        drop(a);
        assert_eq!(inflight.len(), 0, "answered: no newcomer reuses it");
        let c = inflight.join(key(1));
        assert!(!c.cell().initialized());
        drop(b);
        assert_eq!(inflight.len(), 1, "b's leaving does not remove c's slot");
        drop(c);
        assert_eq!(inflight.len(), 0);
    }
}
