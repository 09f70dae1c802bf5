//! Small in-memory caches for facts that change rarely (who holds a token, a runner's tags,
//! a pipeline's fixed fields), so the hot paths — a poll, a claim, a log append — do not ask
//! the database for them every time. Bounded in size, entries expire.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bounded map whose entries live for `ttl`.
#[derive(Debug)]
pub(super) struct TtlCache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
    ttl: Duration,
    max: usize,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    pub(super) fn new(ttl: Duration, max: usize) -> Self {
        TtlCache {
            map: Mutex::new(HashMap::new()),
            ttl,
            max,
        }
    }

    pub(super) fn get(&self, k: &K) -> Option<V> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(k)
            .filter(|(_, t)| t.elapsed() < self.ttl)
            .map(|(v, _)| v.clone())
    }

    pub(super) fn insert(&self, k: K, v: V) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max {
            let ttl = self.ttl;
            map.retain(|_, (_, t)| t.elapsed() < ttl);
            if map.len() >= self.max {
                map.clear();
            }
        }
        map.insert(k, (v, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_size_is_bounded() {
        let c = TtlCache::new(Duration::from_millis(30), 3);
        c.insert(1, "a");
        assert_eq!(c.get(&1), Some("a"));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.get(&1), None);
        for i in 0..10 {
            c.insert(i, "x");
        }
        assert!(c.map.lock().unwrap().len() <= 3);
        assert_eq!(c.get(&9), Some("x"));
    }
}
