//! What the ledger knows of the sidecars that sync with it, for metrics: when each last
//! synced, how old the oldest usage it brought was, and how many leases it holds (counted
//! now and then by the ledger process). At most `DEFAULT_SIDECAR_SERIES_MAX` sidecars are
//! kept by name; the rest are folded into one entry named `OTHER_SIDECARS`, so a fleet
//! (or a client making up ids) cannot grow the metrics without bound.

use dashmap::DashMap;

/// Most sidecars shown by name in the ledger's metrics.
pub const DEFAULT_SIDECAR_SERIES_MAX: usize = 64;
/// The entry that stands for every sidecar beyond the limit.
pub const OTHER_SIDECARS: &str = "other";

/// One sidecar's last sync, as the ledger saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub synced_at_ms: i64,
    /// Age of the oldest usage record in its last Sync when it arrived (0: none).
    pub usage_lag_ms: i64,
    /// Leases it holds with money in them, when last counted.
    pub leases: Option<usize>,
}

#[derive(Debug)]
pub struct Sidecars {
    seen: DashMap<String, Seen>,
    series_max: usize,
    /// Wakes whoever counts leases when a sidecar is seen for the first time.
    new_sidecar: tokio::sync::Notify,
}

impl Default for Sidecars {
    fn default() -> Self {
        Sidecars::new(DEFAULT_SIDECAR_SERIES_MAX)
    }
}

impl Sidecars {
    pub fn new(series_max: usize) -> Sidecars {
        Sidecars {
            seen: DashMap::new(),
            series_max: series_max.max(1),
            new_sidecar: tokio::sync::Notify::new(),
        }
    }

    /// A Sync of `sidecar_id` at `now_ms` whose oldest usage was recorded at `oldest_ms`.
    pub fn synced(&self, sidecar_id: &str, now_ms: i64, oldest_ms: Option<i64>) {
        let lag_ms = oldest_ms.map_or(0, |at| now_ms.saturating_sub(at).max(0));
        if let Some(mut s) = self.seen.get_mut(sidecar_id) {
            s.synced_at_ms = now_ms;
            s.usage_lag_ms = lag_ms;
            return;
        }
        let named = self.seen.len() < self.series_max;
        let key = if named { sidecar_id } else { OTHER_SIDECARS };
        // Several sidecars in the one `OTHER_SIDECARS` entry: the latest Sync among them.
        let mut s = self.seen.entry(key.to_owned()).or_default();
        s.usage_lag_ms = lag_ms;
        s.synced_at_ms = s.synced_at_ms.max(now_ms);
        drop(s);
        if named {
            self.new_sidecar.notify_one();
        }
    }

    /// Resolves when a sidecar was seen for the first time since the last call.
    pub async fn seen_new(&self) {
        self.new_sidecar.notified().await
    }

    /// The leases `sidecar_id` holds, as just counted.
    pub fn set_leases(&self, sidecar_id: &str, leases: usize) {
        if let Some(mut s) = self.seen.get_mut(sidecar_id) {
            s.leases = Some(leases);
        }
    }

    /// Every entry, by sidecar id.
    pub fn list(&self) -> Vec<(String, Seen)> {
        let mut v: Vec<_> = self
            .seen
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_beyond_the_limit_share_one_entry() {
        let s = Sidecars::new(2);
        s.synced("a", 1_000, Some(400));
        s.synced("b", 1_000, None);
        s.synced("c", 2_000, Some(1_000));
        s.synced("d", 1_500, Some(1_400));
        s.set_leases("a", 3);
        let list = s.list();
        let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", OTHER_SIDECARS]);
        assert_eq!(list[0].1.usage_lag_ms, 600);
        assert_eq!(list[0].1.leases, Some(3));
        assert_eq!(list[2].1.synced_at_ms, 2_000);
        assert_eq!(list[2].1.usage_lag_ms, 100);
        s.synced("a", 3_000, None);
        assert_eq!(s.list()[0].1.usage_lag_ms, 0);
    }
}
