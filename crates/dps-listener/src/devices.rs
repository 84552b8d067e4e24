//! Connections per device identity: how many authenticated connections each registration id
//! holds now, so that one device (or whoever stole its credentials) cannot hold many slots.
//! Only authenticated connections count: counting claims would let anyone lock a device out
//! by naming it. Each device listener (MQTT, AMQP) keeps one, with its own
//! `max_connections_per_device`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The authenticated connections of every device; clones share the table.
#[derive(Debug, Clone)]
pub struct DeviceConnections {
    max_per_device: usize,
    /// Keyed by the lower-cased registration id (registration ids are case-insensitive).
    /// At most one entry per open connection, so bounded by the listener's slots.
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One authenticated connection's place in [`DeviceConnections`]; freed on drop.
#[derive(Debug)]
pub struct DevicePlace {
    table: DeviceConnections,
    key: String,
}

impl DeviceConnections {
    /// A table that lets each device hold at most `max_per_device` connections.
    pub fn new(max_per_device: usize) -> Self {
        Self {
            max_per_device,
            open: Arc::default(),
        }
    }

    /// A place for one more connection of the attested registration id `id` (compared
    /// without regard to ASCII case, as DPS compares them), or `None` when it holds the
    /// maximum.
    pub fn enter(&self, id: &str) -> Option<DevicePlace> {
        let key = id.to_ascii_lowercase();
        let mut open = self.lock();
        let count = open.entry(key.clone()).or_default();
        if *count >= self.max_per_device {
            if *count == 0 {
                open.remove(&key);
            }
            return None;
        }
        *count += 1;
        drop(open);
        Some(DevicePlace {
            table: self.clone(),
            key,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // Every update is one integer step that cannot panic: the map stays consistent.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for DevicePlace {
    fn drop(&mut self) {
        let mut open = self.table.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_holds_at_most_its_share_in_any_letter_case() {
        let devices = DeviceConnections::new(2);
        let first = devices.enter("dev-1").unwrap();
        let _second = devices.enter("DEV-1").unwrap();
        assert!(devices.enter("Dev-1").is_none());
        assert!(devices.enter("dev-2").is_some());
        drop(first);
        assert!(devices.enter("dev-1").is_some());
        assert!(DeviceConnections::new(0).enter("dev-1").is_none());
        assert!(
            devices.lock().get("dev-2").is_none(),
            "freed entries are removed"
        );
    }
}
