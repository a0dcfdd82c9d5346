//! Publishing endpoint sets per the `meshwasm-endpoints` contract: the set under `set_key(service)`
//! with a version that only grows on a real change, the service in the services list, and a
//! notification on every subscriber's queue.

use meshwasm_endpoints::{Endpoint, EndpointSet, SERVICES_KEY, SUBSCRIBERS_KEY, Subscribers, set_key};

use crate::host::{Host, Level, SetError};

/// Result of [`publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The set in shared data already has these endpoints.
    Unchanged {
        version: u64,
    },
    Updated {
        version: u64,
        notified: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("shared data kept changing under concurrent writes")]
    Contended,
    #[error("shared data refused the write")]
    Refused,
}

/// The set currently published for `service`, if any (and readable).
pub fn read_published(host: &impl Host, service: &str) -> Option<EndpointSet> {
    let (bytes, _) = host.shared_get(&set_key(service))?;
    EndpointSet::decode(&bytes).ok()
}

/// Publishes `endpoints` (canonical order) for `service` unless shared data already holds them.
pub fn publish(
    host: &mut impl Host,
    service: &str,
    endpoints: &[Endpoint],
) -> Result<Published, PublishError> {
    let key = set_key(service);
    for _ in 0..8 {
        let current = host.shared_get(&key);
        let (old, cas) = match &current {
            Some((bytes, cas)) => (EndpointSet::decode(bytes).ok(), Some(*cas)),
            None => (None, None),
        };
        if let Some(old) = &old
            && old.endpoints == endpoints
        {
            ensure_listed(host, service);
            return Ok(Published::Unchanged { version: old.version });
        }
        // An unreadable old value (garbage, another format) is replaced, starting over at 1.
        let version = old.map_or(1, |o| o.version + 1);
        let set = EndpointSet { version, endpoints: endpoints.to_vec() };
        match host.shared_set(&key, &set.encode(), cas) {
            Ok(()) => {
                ensure_listed(host, service);
                let notified = notify(host, service);
                return Ok(Published::Updated { version, notified });
            }
            Err(SetError::CasMismatch) => continue,
            Err(SetError::Other) => return Err(PublishError::Refused),
        }
    }
    Err(PublishError::Contended)
}

/// The published sets of every listed service as one JSON object `{"<service>": <set>, ...}`,
/// each set in its shared-data encoding (for the debug endpoint).
pub fn dump(host: &impl Host) -> Vec<u8> {
    let services = host
        .shared_get(SERVICES_KEY)
        .and_then(|(bytes, _)| serde_json::from_slice::<Vec<String>>(&bytes).ok())
        .unwrap_or_default();
    let mut out = serde_json::Map::new();
    for s in services {
        if let Some((bytes, _)) = host.shared_get(&set_key(&s))
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
        {
            out.insert(s, v);
        }
    }
    serde_json::to_vec(&out).unwrap_or_default()
}

/// Adds `service` to the JSON list under [`SERVICES_KEY`] (CAS loop).
fn ensure_listed(host: &mut impl Host, service: &str) {
    for _ in 0..8 {
        let (mut list, cas) = match host.shared_get(SERVICES_KEY) {
            Some((bytes, cas)) => {
                (serde_json::from_slice::<Vec<String>>(&bytes).unwrap_or_default(), Some(cas))
            }
            None => (Vec::new(), None),
        };
        if list.iter().any(|s| s == service) {
            return;
        }
        list.push(service.to_owned());
        list.sort();
        let bytes = serde_json::to_vec(&list).unwrap_or_default();
        if host.shared_set(SERVICES_KEY, &bytes, cas) != Err(SetError::CasMismatch) {
            return;
        }
    }
}

/// Enqueues the service name on each subscriber queue; returns how many took it. Queues that do not
/// resolve or refuse the message belong to VMs that are gone: they are pruned from the list.
fn notify(host: &mut impl Host, service: &str) -> usize {
    let subscribers = host
        .shared_get(SUBSCRIBERS_KEY)
        .and_then(|(bytes, _)| Subscribers::decode(&bytes).ok())
        .unwrap_or_default();
    let mut dead = Vec::new();
    let mut notified = 0;
    for q in subscribers.0 {
        if host.enqueue(&q, service.as_bytes()) {
            notified += 1;
        } else {
            dead.push(q);
        }
    }
    if !dead.is_empty() {
        prune_subscribers(host, &dead);
    }
    notified
}

/// Removes `dead` queue names from the subscriber list with a CAS update, retrying on a concurrent
/// write so that subscribers added meanwhile are kept.
fn prune_subscribers(host: &mut impl Host, dead: &[String]) {
    for _ in 0..8 {
        let Some((bytes, cas)) = host.shared_get(SUBSCRIBERS_KEY) else { return };
        // An unreadable list is the subscribers' to repair (they replace it when they subscribe).
        let Ok(mut subs) = Subscribers::decode(&bytes) else { return };
        if !subs.prune(dead) {
            return;
        }
        match host.shared_set(SUBSCRIBERS_KEY, &subs.encode(), Some(cas)) {
            Ok(()) => {
                host.log(
                    Level::Info,
                    &format!(
                        "meshwasm discovery: removed {} gone subscriber queue(s) from the notify list: {}",
                        dead.len(),
                        dead.join(", ")
                    ),
                );
                return;
            }
            Err(SetError::CasMismatch) => continue,
            Err(SetError::Other) => break,
        }
    }
    host.log(
        Level::Warn,
        "meshwasm discovery: could not remove gone subscriber queues from the notify list; will retry on the next publish",
    );
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::host::fake::{FakeHost, Proxy};

    fn ep(a: &str) -> Endpoint {
        Endpoint::new(a.parse().unwrap())
    }

    #[test]
    fn versions_grow_only_on_change_and_subscribers_hear() {
        let proxy = Rc::new(RefCell::new(Proxy::default()));
        proxy.borrow_mut().queues.insert("meshwasm.endpoints.v1.notify.a".into(), Default::default());
        let mut h = FakeHost::new(proxy.clone());
        let subs = Subscribers(vec![
            "meshwasm.endpoints.v1.notify.a".into(),
            "meshwasm.endpoints.v1.notify.gone".into(),
        ]);
        h.shared_set(SUBSCRIBERS_KEY, &subs.encode(), None).unwrap();

        assert_eq!(
            publish(&mut h, "api", &[ep("10.0.0.1:80")]),
            Ok(Published::Updated { version: 1, notified: 1 })
        );
        assert_eq!(publish(&mut h, "api", &[ep("10.0.0.1:80")]), Ok(Published::Unchanged { version: 1 }));
        assert_eq!(
            publish(&mut h, "api", &[ep("10.0.0.1:80"), ep("10.0.0.2:80")]),
            Ok(Published::Updated { version: 2, notified: 1 })
        );
        publish(&mut h, "db", &[ep("10.0.0.3:80")]).unwrap();
        // The queue nobody registered was pruned on the first publish; the live one stays.
        let subs = Subscribers::decode(&h.shared_get(SUBSCRIBERS_KEY).unwrap().0).unwrap();
        assert_eq!(subs.0, ["meshwasm.endpoints.v1.notify.a"]);
        assert!(h.logged("removed 1 gone subscriber queue(s)"));
        let set = read_published(&h, "api").unwrap();
        assert_eq!((set.version, set.endpoints.len()), (2, 2));
        let list: Vec<String> = serde_json::from_slice(&h.shared_get(SERVICES_KEY).unwrap().0).unwrap();
        assert_eq!(list, ["api", "db"]);
        let dump: serde_json::Value = serde_json::from_slice(&dump(&h)).unwrap();
        assert_eq!(dump["api"]["v"], 2);
        assert_eq!(dump["db"]["e"][0]["a"], "10.0.0.3:80");
        let q = &proxy.borrow().queues["meshwasm.endpoints.v1.notify.a"];
        assert_eq!(
            q.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect::<Vec<_>>(),
            ["api", "api", "db"]
        );
    }

    #[test]
    fn pruning_dead_queues_keeps_subscribers_added_concurrently() {
        let proxy = Rc::new(RefCell::new(Proxy::default()));
        for q in ["live1", "live2"] {
            proxy.borrow_mut().queues.insert(q.into(), Default::default());
        }
        let mut h = FakeHost::new(proxy.clone());
        let subs = Subscribers(vec!["dead1".into(), "live1".into(), "dead2".into(), "live2".into()]);
        h.shared_set(SUBSCRIBERS_KEY, &subs.encode(), None).unwrap();
        assert_eq!(notify(&mut h, "api"), 2);
        let now = Subscribers::decode(&h.shared_get(SUBSCRIBERS_KEY).unwrap().0).unwrap();
        assert_eq!(now.0, ["live1", "live2"]);

        // A subscriber that joined between the read and the prune is kept: the CAS write retries
        // against the fresh list.
        let (bytes, _) = h.shared_get(SUBSCRIBERS_KEY).unwrap();
        let mut with_new = Subscribers::decode(&bytes).unwrap();
        with_new.add("dead3");
        with_new.add("new");
        h.shared_set(SUBSCRIBERS_KEY, &with_new.encode(), None).unwrap();
        prune_subscribers(&mut RacingHost { inner: h.clone(), race: Some("late") }, &["dead3".into()]);
        let now = Subscribers::decode(&h.shared_get(SUBSCRIBERS_KEY).unwrap().0).unwrap();
        assert_eq!(now.0, ["live1", "live2", "new", "late"]);
        // Nothing dead: no write at all.
        for q in ["new", "late"] {
            proxy.borrow_mut().queues.insert(q.into(), Default::default());
        }
        let writes = proxy.borrow().shared.writes();
        assert_eq!(notify(&mut h, "api"), 4);
        assert_eq!(proxy.borrow().shared.writes(), writes);
    }

    /// A host on which another VM adds a subscriber right after the first read of the list.
    struct RacingHost {
        inner: FakeHost,
        race: Option<&'static str>,
    }

    impl Host for RacingHost {
        fn now_ms(&self) -> u64 {
            self.inner.now_ms()
        }
        fn random(&mut self) -> u64 {
            self.inner.random()
        }
        fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.shared_get(key)
        }
        fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
            if let Some(q) = self.race.take() {
                let (bytes, c) = self.inner.shared_get(key).unwrap();
                let mut s = Subscribers::decode(&bytes).unwrap();
                s.add(q);
                self.inner.shared_set(key, &s.encode(), Some(c)).unwrap();
            }
            self.inner.shared_set(key, value, cas)
        }
        fn enqueue(&mut self, queue: &str, msg: &[u8]) -> bool {
            self.inner.enqueue(queue, msg)
        }
        fn log(&mut self, level: Level, msg: &str) {
            self.inner.log(level, msg);
        }
        fn count(&mut self, service: usize, counter: crate::host::Counter) {
            self.inner.count(service, counter);
        }
        fn endpoints_gauge(&mut self, service: usize, value: u64) {
            self.inner.endpoints_gauge(service, value);
        }
    }
}
