//! Proxy-wide shared data (`proxy_get_shared_data` / `proxy_set_shared_data`), as the filters' logic
//! sees it, and `MemoryShared`, the one in-memory implementation their native tests use.
//!
//! Envoy's rules, which every implementation follows:
//! - every write gives the key a new, non-zero CAS token;
//! - a write with CAS 0 (`None`) is unconditional;
//! - a write with a non-zero CAS succeeds only if the key's current token equals it, else it fails
//!   with `CAS_MISMATCH` — but a key that does not exist is simply created: **creating a key is never
//!   protected by CAS**, so two workers can both "create" it and the later write wins. The
//!   [`crate::lease`] and [`crate::worker_id`] modules are built around this.

/// A failed shared-data write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    /// Another worker wrote the key since it was read: re-read and retry.
    CasMismatch,
    /// Any other status (shared data unavailable or refusing the write).
    Other,
}

/// Shared data with compare-and-swap, implemented over hostcalls by `glue::HostShared`
/// (wasm32) and in memory by `MemoryShared` (tests).
pub trait SharedData {
    /// The value and its CAS token, `None` when the key is absent.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes `value`. `cas` `None` or `Some(0)`: unconditional. Otherwise only if the key's token
    /// still equals `cas` ([`SetError::CasMismatch`] if not); an absent key is created either way.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;
}

impl<T: SharedData + ?Sized> SharedData for &mut T {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        (**self).get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        (**self).set(key, value, cas)
    }
}

#[cfg(any(test, feature = "memory"))]
pub use memory::MemoryShared;

#[cfg(any(test, feature = "memory"))]
mod memory {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use super::{SetError, SharedData};

    #[derive(Debug, Default)]
    struct Inner {
        map: BTreeMap<String, (Vec<u8>, u32)>,
        last_cas: u32,
        writes: usize,
        refuse_prefix: Option<String>,
        race: Option<Vec<u8>>,
    }

    impl Inner {
        fn bump(&mut self) -> u32 {
            // Like Envoy's: never 0, which would mean "unconditional".
            self.last_cas = self.last_cas.wrapping_add(1).max(1);
            self.last_cas
        }
    }

    /// In-memory shared data with exactly Envoy's semantics (see the module docs). Clones are handles
    /// to the same store, as every VM of a proxy sees the same shared data: give one clone to each
    /// simulated worker.
    ///
    /// Test helpers inject what other workers or the host do: [`MemoryShared::remove`] (a read that
    /// happened before another worker's write), [`MemoryShared::race_next_write`] (another worker
    /// writes between this one's read and write), [`MemoryShared::refuse_writes_under`] (a host that
    /// refuses writes).
    #[derive(Debug, Clone, Default)]
    pub struct MemoryShared(Rc<RefCell<Inner>>);

    impl MemoryShared {
        /// Writes unconditionally (as another worker or an older filter version would).
        pub fn put(&self, key: &str, value: &[u8]) {
            let mut i = self.0.borrow_mut();
            let cas = i.bump();
            i.map.insert(key.to_owned(), (value.to_vec(), cas));
            i.writes += 1;
        }

        /// The value of `key`, if any.
        pub fn value(&self, key: &str) -> Option<Vec<u8>> {
            self.0.borrow().map.get(key).map(|(v, _)| v.clone())
        }

        /// Deletes `key`.
        pub fn remove(&self, key: &str) {
            self.0.borrow_mut().map.remove(key);
        }

        /// Deletes every key.
        pub fn clear(&self) {
            self.0.borrow_mut().map.clear();
        }

        /// Successful writes so far.
        pub fn writes(&self) -> usize {
            self.0.borrow().writes
        }

        /// Writes to keys starting with `prefix` fail with [`SetError::Other`] (`None`: none do).
        pub fn refuse_writes_under(&self, prefix: Option<String>) {
            self.0.borrow_mut().refuse_prefix = prefix;
        }

        /// Just before the next write lands, another worker writes `value` to the same key (an
        /// unconditional write with a new CAS token); the next write then succeeds or fails by the
        /// usual rules.
        pub fn race_next_write(&self, value: &[u8]) {
            self.0.borrow_mut().race = Some(value.to_vec());
        }
    }

    impl SharedData for MemoryShared {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.0.borrow().map.get(key).cloned()
        }

        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
            let mut i = self.0.borrow_mut();
            if i.refuse_prefix.as_deref().is_some_and(|p| key.starts_with(p)) {
                return Err(SetError::Other);
            }
            if let Some(other) = i.race.take() {
                let c = i.bump();
                i.map.insert(key.to_owned(), (other, c));
                i.writes += 1;
            }
            let cas = cas.unwrap_or(0);
            if let Some((_, current)) = i.map.get(key)
                && cas != 0
                && cas != *current
            {
                return Err(SetError::CasMismatch);
            }
            let c = i.bump();
            i.map.insert(key.to_owned(), (value.to_vec(), c));
            i.writes += 1;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_zero_is_unconditional_and_nonzero_must_match() {
        let mut s = MemoryShared::default();
        s.set("k", b"a", None).unwrap();
        let (_, c1) = s.get("k").unwrap();
        assert_ne!(c1, 0, "CAS tokens are never 0");
        // CAS 0, spelled either way, overwrites whatever is there (two of the old fakes refused it).
        s.set("k", b"b", Some(0)).unwrap();
        s.set("k", b"c", None).unwrap();
        let (v, c2) = s.get("k").unwrap();
        assert_eq!(v, b"c");
        assert_ne!(c1, c2, "every write changes the token");
        assert_eq!(s.set("k", b"d", Some(c1)), Err(SetError::CasMismatch));
        assert_eq!(s.get("k").unwrap().0, b"c", "a mismatched write changes nothing");
        s.set("k", b"d", Some(c2)).unwrap();
        assert_eq!(s.value("k").unwrap(), b"d");
    }

    #[test]
    fn a_cas_write_to_an_absent_key_creates_it() {
        // Envoy: creation is never CAS-protected, whatever token the writer passes.
        let mut s = MemoryShared::default();
        s.set("k", b"x", Some(12345)).unwrap();
        assert_eq!(s.value("k").unwrap(), b"x");
    }

    #[test]
    fn clones_share_one_store_and_helpers_inject_other_workers() {
        let a = MemoryShared::default();
        let mut b = a.clone();
        a.put("k", b"1");
        let (_, c) = b.get("k").unwrap();
        a.race_next_write(b"other");
        assert_eq!(b.set("k", b"mine", Some(c)), Err(SetError::CasMismatch));
        assert_eq!(a.value("k").unwrap(), b"other");
        a.refuse_writes_under(Some("r.".into()));
        assert_eq!(b.set("r.x", b"", None), Err(SetError::Other));
        let writes = a.writes();
        b.set("k", b"2", None).unwrap();
        assert_eq!(a.writes(), writes + 1);
        a.remove("k");
        assert!(b.get("k").is_none());
    }
}
