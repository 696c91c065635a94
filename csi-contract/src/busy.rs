//! One operation per object at a time: a second request for a volume or
//! snapshot while the first still runs is answered ABORTED (the CSI spec's
//! "operation pending for volume"), and the CO retries.

use std::collections::HashSet;
use std::sync::Mutex;

/// The keys of the objects an operation is running on.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashSet<String>>);

/// Holds its key in the [`InFlight`] set until dropped (every return path,
/// panics included).
#[derive(Debug)]
pub struct Busy<'a> {
    set: &'a InFlight,
    key: String,
}

impl InFlight {
    /// Marks `key` busy, or `None` when an operation on it is already running.
    pub fn enter(&self, key: impl Into<String>) -> Option<Busy<'_>> {
        let key = key.into();
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(key.clone()).then(|| Busy { set: self, key })
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.set.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time() {
        let set = InFlight::default();
        let first = set.enter("volume a").unwrap();
        assert!(set.enter("volume a").is_none());
        let other = set.enter("volume b");
        assert!(other.is_some());
        drop(first);
        assert!(set.enter("volume a").is_some());
    }
}
