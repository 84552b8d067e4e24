//! Readiness: named checks that must all pass for `/readyz` to answer 200. `dpsd` adds the
//! store's health and "every listener is bound"; the assignment feed adds its broker link.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

type Check = Box<dyn Fn() -> bool + Send + Sync>;

/// The readiness checks. Clones share them; checks can be added while serving.
#[derive(Clone, Default)]
pub struct Health {
    checks: Arc<RwLock<Vec<(&'static str, Check)>>>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Health {
    /// Adds a check called `name` (shown by `/readyz` while it fails). It runs on every
    /// `/readyz` request: it must be cheap and never block (read an atomic, a watch).
    pub fn add_check(&self, name: &'static str, check: impl Fn() -> bool + Send + Sync + 'static) {
        self.write().push((name, Box::new(check)));
    }

    /// The names of the checks that fail now (empty: ready).
    pub fn failing(&self) -> Vec<&'static str> {
        let checks = self.checks.read().unwrap_or_else(PoisonError::into_inner);
        checks
            .iter()
            .filter(|(_, check)| !check())
            .map(|(name, _)| *name)
            .collect()
    }

    fn names(&self) -> Vec<&'static str> {
        let checks = self.checks.read().unwrap_or_else(PoisonError::into_inner);
        checks.iter().map(|(name, _)| *name).collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<(&'static str, Check)>> {
        // A check that panicked leaves the list whole (a push cannot be half done).
        self.checks.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn ready_only_while_every_check_passes() {
        let health = Health::default();
        assert!(health.failing().is_empty(), "no checks: ready");
        let store = Arc::new(AtomicBool::new(true));
        let broker = Arc::new(AtomicBool::new(false));
        let (s, b) = (store.clone(), broker.clone());
        health.add_check("store", move || s.load(Ordering::SeqCst));
        health
            .clone()
            .add_check("broker", move || b.load(Ordering::SeqCst));
        assert_eq!(health.failing(), ["broker"]);
        broker.store(true, Ordering::SeqCst);
        assert!(health.failing().is_empty());
        store.store(false, Ordering::SeqCst);
        assert_eq!(health.failing(), ["store"]);
        assert_eq!(format!("{health:?}"), r#"["store", "broker"]"#);
    }
}
