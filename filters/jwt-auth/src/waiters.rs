//! Paused requests of one worker: which providers' keys or introspection answers each waits for and
//! since when. Pure: the glue pauses a request on [`crate::engine::Outcome::Wait`] and records it here,
//! re-runs the ones [`Waiters::take_ready`] hands back when a provider's state changes, answers the
//! ones [`Waiters::take_expired`] hands back with the engine's timeout reply, and forgets a request
//! when its stream ends.

use crate::engine::WaitFor;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub context_id: u32,
    /// When the request first paused (a re-run that waits again keeps it: the wait stays bounded).
    pub since_ms: u64,
    pub providers: Vec<usize>,
    pub on: WaitFor,
}

#[derive(Debug, Default)]
pub struct Waiters {
    list: Vec<Waiter>,
}

impl Waiters {
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Request `context_id` waits for `providers` since `since_ms`. Waiting again (still paused) keeps
    /// the earlier start.
    pub fn wait(&mut self, context_id: u32, providers: Vec<usize>, on: WaitFor, since_ms: u64) {
        match self.list.iter_mut().find(|w| w.context_id == context_id) {
            Some(w) => {
                w.since_ms = w.since_ms.min(since_ms);
                w.providers = providers;
                w.on = on;
            }
            None => self.list.push(Waiter { context_id, since_ms, providers, on }),
        }
    }

    /// Removes and returns the requests waiting for any of the `changed` providers, in pause order.
    pub fn take_ready(&mut self, changed: &[usize]) -> Vec<Waiter> {
        let (ready, rest) = std::mem::take(&mut self.list)
            .into_iter()
            .partition(|w| w.providers.iter().any(|p| changed.contains(p)));
        self.list = rest;
        ready
    }

    /// Removes and returns the requests that have waited `timeout_ms` or longer at `now_ms`.
    pub fn take_expired(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<Waiter> {
        let (expired, rest) = std::mem::take(&mut self.list)
            .into_iter()
            .partition(|w| now_ms.saturating_sub(w.since_ms) >= timeout_ms);
        self.list = rest;
        expired
    }

    /// The request's stream ended (answered, reset or closed): forget it.
    pub fn remove(&mut self, context_id: u32) {
        self.list.retain(|w| w.context_id != context_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ws: &[Waiter]) -> Vec<u32> {
        ws.iter().map(|w| w.context_id).collect()
    }

    #[test]
    fn ready_waiters_are_those_of_the_changed_providers() {
        let mut w = Waiters::default();
        w.wait(1, vec![0], WaitFor::Keys, 100);
        w.wait(2, vec![1], WaitFor::Introspection, 100);
        w.wait(3, vec![0, 1], WaitFor::KeysAndIntrospection, 100);
        assert_eq!(ids(&w.take_ready(&[1])), vec![2, 3]);
        assert_eq!(ids(&w.take_ready(&[1])), Vec::<u32>::new(), "taken once");
        assert_eq!(w.len(), 1);
        assert_eq!(ids(&w.take_ready(&[0, 5])), vec![1]);
        assert!(w.is_empty());
    }

    #[test]
    fn waiting_again_keeps_the_first_start_so_the_wait_stays_bounded() {
        let mut w = Waiters::default();
        w.wait(7, vec![0], WaitFor::Keys, 100);
        w.wait(7, vec![0, 1], WaitFor::KeysAndIntrospection, 900);
        assert_eq!(w.len(), 1, "one entry per request");
        // A re-run after take_ready waits again with its original start.
        let again = w.take_ready(&[0]);
        assert_eq!(again[0].providers, vec![0, 1]);
        assert_eq!(again[0].on, WaitFor::KeysAndIntrospection);
        w.wait(7, vec![0], WaitFor::Keys, again[0].since_ms);
        assert!(w.take_expired(1099, 1000).is_empty());
        assert_eq!(ids(&w.take_expired(1100, 1000)), vec![7]);
    }

    #[test]
    fn expiry_and_removal() {
        let mut w = Waiters::default();
        w.wait(1, vec![0], WaitFor::Keys, 0);
        w.wait(2, vec![0], WaitFor::Keys, 500);
        w.wait(3, vec![0], WaitFor::Keys, 600);
        w.remove(3);
        let expired = w.take_expired(1000, 1000);
        assert_eq!(ids(&expired), vec![1]);
        assert_eq!(ids(&w.take_ready(&[0])), vec![2], "the removed request is never resumed");
        // A clock that went backwards expires nothing.
        w.wait(4, vec![0], WaitFor::Keys, 5000);
        assert!(w.take_expired(10, 1000).is_empty());
    }
}
