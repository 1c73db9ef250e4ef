//! The depth of a controller's work queue: objects triggered and not yet reconciled. kube's
//! controller keeps its queue private, so Sluice counts what it feeds in (deduplicated, as the
//! queue is) and what the reconciler takes out.

use std::{
    collections::HashSet,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use kube::{
    Resource,
    runtime::reflector::{ObjectRef, Store},
};
use prometheus_client::metrics::gauge::Gauge;

/// Marks between two passes dropping objects that left the cache (a trigger for a deleted
/// object is never reconciled, so it would stay counted).
const PRUNE_EVERY: usize = 512;

/// Objects of kind `K` waiting for a reconcile, exported as a gauge.
pub struct Pending<K: Resource<DynamicType = ()> + 'static> {
    refs: Mutex<HashSet<ObjectRef<K>>>,
    store: Store<K>,
    gauge: Gauge,
    marks: AtomicUsize,
}

impl<K> Pending<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// Counts into `gauge`; `store` is the controller's cache.
    pub fn new(store: Store<K>, gauge: Gauge) -> Self {
        Self {
            refs: Mutex::default(),
            store,
            gauge,
            marks: AtomicUsize::new(0),
        }
    }

    /// Notes that `refs` were triggered; returns them unchanged.
    pub fn mark<I: IntoIterator<Item = ObjectRef<K>>>(&self, refs: I) -> Vec<ObjectRef<K>> {
        let refs: Vec<_> = refs.into_iter().collect();
        let prune = self.marks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1;
        let mut set = self.lock();
        set.extend(refs.iter().cloned());
        if prune {
            set.retain(|r| self.store.get(r).is_some());
        }
        self.gauge.set(i64::try_from(set.len()).unwrap_or(i64::MAX));
        refs
    }

    /// Notes that the reconcile of `obj` started: later triggers queue it again.
    pub fn started(&self, obj: &ObjectRef<K>) {
        let mut set = self.lock();
        set.remove(obj);
        self.gauge.set(i64::try_from(set.len()).unwrap_or(i64::MAX));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<ObjectRef<K>>> {
        self.refs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ModelRelease;

    #[test]
    fn the_depth_counts_each_object_once_until_its_reconcile_starts() {
        let (store, _writer) = kube::runtime::reflector::store::<ModelRelease>();
        let gauge = Gauge::default();
        let pending = Pending::new(store, gauge.clone());
        let a = ObjectRef::<ModelRelease>::new("a").within("ns");
        let b = ObjectRef::<ModelRelease>::new("b").within("ns");
        pending.mark([a.clone(), b.clone()]);
        pending.mark([a.clone()]);
        assert_eq!(gauge.get(), 2);
        pending.started(&a);
        assert_eq!(gauge.get(), 1);
        pending.mark([a.clone()]);
        assert_eq!(gauge.get(), 2);
    }

    #[test]
    fn objects_that_left_the_cache_stop_counting() {
        let (store, _writer) = kube::runtime::reflector::store::<ModelRelease>();
        let gauge = Gauge::default();
        let pending = Pending::new(store, gauge.clone());
        for i in 0..PRUNE_EVERY {
            pending.mark([ObjectRef::<ModelRelease>::new(&format!("gone-{i}")).within("ns")]);
        }
        // The cache is empty: the last mark pruned every ref that names no cached object.
        assert_eq!(gauge.get(), 0);
    }
}
