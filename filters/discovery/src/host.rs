//! The narrow seam between discovery's logic and the proxy: shared data with CAS, shared queues,
//! the clock, logs and metrics. The glue implements it over proxy-wasm hostcalls; [`fake::FakeHost`]
//! implements it in memory for unit tests (several engines may share one to act as several VMs).

/// Log levels the logic uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// Per-service counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    /// Polls started.
    Polls,
    /// Polls that failed (transport, status, garbage, timeout); the last good set stayed.
    Errors,
    /// New endpoint sets published.
    Updates,
    /// Empty answers not published because `allow_empty` is false.
    EmptyRejected,
    /// Endpoints left out of an answer by the address policy (one per endpoint per answer).
    Refused,
    /// Endpoint weights lowered to `MAX_WEIGHT` (one per endpoint per answer).
    WeightClamped,
}

impl Counter {
    pub const ALL: [Counter; 6] = [
        Counter::Polls,
        Counter::Errors,
        Counter::Updates,
        Counter::EmptyRejected,
        Counter::Refused,
        Counter::WeightClamped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::Polls => "polls",
            Counter::Errors => "errors",
            Counter::Updates => "updates",
            Counter::EmptyRejected => "empty_rejected",
            Counter::Refused => "refused",
            Counter::WeightClamped => "weight_clamped",
        }
    }
}

/// A failed shared-data write (the filters' one type: a lost compare-and-swap or another status).
pub use meshwasm_filter_runtime::shared_data::SetError;

pub trait Host {
    /// Wall-clock milliseconds, the same clock in every VM of the proxy.
    fn now_ms(&self) -> u64;
    /// A random number, different in every VM (used once, for the VM's id).
    fn random(&mut self) -> u64;
    /// Value and CAS token of a shared-data key, `None` when absent.
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes a key; with a non-zero `cas`, only if the key's CAS token still equals it (Envoy's rules,
    /// see [`meshwasm_filter_runtime::shared_data`]: CAS 0 is unconditional, an absent key is created).
    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;
    /// Enqueues `msg` on the shared queue called `queue` (in this VM id); false when it does not exist.
    fn enqueue(&mut self, queue: &str, msg: &[u8]) -> bool;
    fn log(&mut self, level: Level, msg: &str);
    /// Adds 1 to a per-service counter (`service` indexes the plan's services).
    fn count(&mut self, service: usize, counter: Counter);
    /// Sets the per-service gauge of published endpoints.
    fn endpoints_gauge(&mut self, service: usize, value: u64);
}

#[cfg(test)]
pub mod fake {
    use std::cell::RefCell;
    use std::collections::{BTreeMap, VecDeque};
    use std::rc::Rc;

    use meshwasm_filter_runtime::shared_data::{MemoryShared, SharedData};

    use super::*;

    /// What all fake VMs of one proxy share.
    #[derive(Debug, Default)]
    pub struct Proxy {
        pub now_ms: u64,
        /// Shared data with Envoy's semantics (and its helpers to refuse or race writes).
        pub shared: MemoryShared,
        pub queues: BTreeMap<String, VecDeque<Vec<u8>>>,
    }

    /// One VM's view: the shared proxy plus its own logs and metrics.
    #[derive(Debug, Clone)]
    pub struct FakeHost {
        pub proxy: Rc<RefCell<Proxy>>,
        pub logs: Rc<RefCell<Vec<(Level, String)>>>,
        pub counters: Rc<RefCell<BTreeMap<(usize, Counter), u64>>>,
        pub gauges: Rc<RefCell<BTreeMap<usize, u64>>>,
    }

    impl FakeHost {
        pub fn new(proxy: Rc<RefCell<Proxy>>) -> Self {
            Self { proxy, logs: Rc::default(), counters: Rc::default(), gauges: Rc::default() }
        }

        pub fn counter(&self, service: usize, c: Counter) -> u64 {
            self.counters.borrow().get(&(service, c)).copied().unwrap_or(0)
        }

        pub fn logged(&self, needle: &str) -> bool {
            self.logs.borrow().iter().any(|(_, m)| m.contains(needle))
        }
    }

    impl Host for FakeHost {
        fn now_ms(&self) -> u64 {
            self.proxy.borrow().now_ms
        }
        fn random(&mut self) -> u64 {
            // Deterministic in tests; uniqueness comes from the shared counter.
            self.proxy.borrow().shared.writes() as u64
        }
        fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.proxy.borrow().shared.get(key)
        }
        fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
            let mut shared = self.proxy.borrow().shared.clone();
            shared.set(key, value, cas)
        }
        fn enqueue(&mut self, queue: &str, msg: &[u8]) -> bool {
            match self.proxy.borrow_mut().queues.get_mut(queue) {
                Some(q) => {
                    q.push_back(msg.to_vec());
                    true
                }
                None => false,
            }
        }
        fn log(&mut self, level: Level, msg: &str) {
            self.logs.borrow_mut().push((level, msg.to_owned()));
        }
        fn count(&mut self, service: usize, counter: Counter) {
            *self.counters.borrow_mut().entry((service, counter)).or_default() += 1;
        }
        fn endpoints_gauge(&mut self, service: usize, value: u64) {
            self.gauges.borrow_mut().insert(service, value);
        }
    }
}
