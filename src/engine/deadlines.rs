//! Accounts by when something is next due on them (a hold's expiry, a time-driven alert,
//! going idle): a min-heap of (time, account id) that housekeeping pops up to now, so its
//! cost follows what is due, not what is cached. Entries may be stale (the hold settled,
//! the account was used again or left the cache): whoever pops one looks at the account
//! and pushes it again if something is still to come.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
pub(super) struct Deadlines {
    heap: Mutex<BinaryHeap<Reverse<(i64, String)>>>,
}

impl Deadlines {
    fn heap(&self) -> MutexGuard<'_, BinaryHeap<Reverse<(i64, String)>>> {
        // The heap is whole after any panic (pushes and pops are single calls).
        self.heap.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Something is due on the account at `at_ms`.
    pub(super) fn push(&self, at_ms: i64, account_id: &str) {
        self.heap().push(Reverse((at_ms, account_id.to_owned())));
    }

    /// Takes the entries due by `now_ms`, earliest first, each account once (its earliest).
    pub(super) fn due(&self, now_ms: i64) -> Vec<(i64, String)> {
        let mut heap = self.heap();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        while heap.peek().is_some_and(|Reverse((at, _))| *at <= now_ms) {
            if let Some(Reverse((at, id))) = heap.pop()
                && seen.insert(id.clone())
            {
                out.push((at, id));
            }
        }
        out
    }

    /// Takes the earliest entry, due or not.
    pub(super) fn pop_first(&self) -> Option<(i64, String)> {
        self.heap().pop().map(|Reverse(e)| e)
    }

    /// Entries held, stale ones included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.heap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_pops_only_what_is_due_once_per_account() {
        let d = Deadlines::default();
        d.push(30, "c");
        d.push(10, "a");
        d.push(20, "a");
        d.push(15, "b");
        assert_eq!(
            d.due(20),
            vec![(10, "a".to_owned()), (15, "b".to_owned())],
            "a's later entry is folded into its earlier one"
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d.pop_first(), Some((30, "c".to_owned())));
        assert!(d.due(i64::MAX).is_empty());
    }
}
