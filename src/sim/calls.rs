//! What the fake vendors remember about the requests they receive: a bounded
//! log of them in arrival order, the busiest window in it, and which orders
//! are being asked about right now. Shared by both fakes; it never decides an
//! answer.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{lock, Shared, State};

/// A log keeps at most this many requests, dropping the oldest, so that a
/// `haoka-sync simulate` left running for days stays bounded; tests and the
/// demo make far fewer.
const LOG_LIMIT: usize = 100_000;

/// A logged request: when it arrived.
pub(super) trait Arrival: Clone {
    fn at(&self) -> Instant;
}

/// Requests in arrival order.
pub(super) struct Log<T> {
    entries: VecDeque<T>,
}

impl<T: Arrival> Log<T> {
    pub(super) fn new() -> Self {
        Log {
            entries: VecDeque::new(),
        }
    }

    pub(super) fn push(&mut self, entry: T) {
        if self.entries.len() == LOG_LIMIT {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    pub(super) fn to_vec(&self) -> Vec<T> {
        self.entries.iter().cloned().collect()
    }

    pub(super) fn count(&self, pred: impl Fn(&T) -> bool) -> usize {
        self.entries.iter().filter(|e| pred(e)).count()
    }

    /// The most requests that arrived within any `window`: what the vendors'
    /// rate limits are about, measured on what really arrived rather than on
    /// what the service believes it sent.
    pub(super) fn max_in_window(&self, window: Duration) -> usize {
        let mut best = 0;
        let mut first = 0;
        for (last, e) in self.entries.iter().enumerate() {
            while self
                .entries
                .get(first)
                .is_some_and(|f| e.at().duration_since(f.at()) >= window)
            {
                first += 1;
            }
            best = best.max(last + 1 - first);
        }
        best
    }
}

/// How many requests about each order are in flight.
#[derive(Default)]
pub(super) struct InFlight {
    now: HashMap<String, u64>,
}

impl InFlight {
    /// Count one more request about each of `ids`; returns the most requests
    /// now in flight for any one of them.
    fn enter(&mut self, ids: &BTreeSet<String>) -> u64 {
        ids.iter()
            .map(|id| {
                let n = self.now.entry(id.clone()).or_insert(0);
                *n += 1;
                *n
            })
            .max()
            .unwrap_or(0)
    }

    fn leave(&mut self, ids: &BTreeSet<String>) {
        for id in ids {
            if let Some(n) = self.now.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    self.now.remove(id);
                }
            }
        }
    }
}

/// One request's orders, counted in flight until it is dropped. A guard
/// rather than a call at the end of the handler, because actix drops the
/// handler's future when the client gives up (a timeout), and that request
/// is over too.
pub(super) struct Flight {
    state: Shared,
    which: fn(&mut State) -> &mut InFlight,
    ids: BTreeSet<String>,
}

impl Flight {
    /// Start counting `ids` (repeats count once) under the lock `s` of
    /// `state`; returns the guard and the most requests now in flight for
    /// one of them.
    pub(super) fn enter(
        state: &Shared,
        s: &mut State,
        which: fn(&mut State) -> &mut InFlight,
        ids: impl IntoIterator<Item = String>,
    ) -> (Flight, u64) {
        let ids: BTreeSet<String> = ids.into_iter().collect();
        let peak = which(s).enter(&ids);
        let flight = Flight {
            state: std::sync::Arc::clone(state),
            which,
            ids,
        };
        (flight, peak)
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        (self.which)(&mut s).leave(&self.ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Arrival for Instant {
        fn at(&self) -> Instant {
            *self
        }
    }

    #[test]
    fn the_busiest_window_counts_arrivals_less_than_a_window_apart() {
        let t0 = Instant::now();
        let mut log = Log::new();
        for ms in [0, 100, 900, 1000, 1100, 1200, 3000] {
            log.push(t0 + Duration::from_millis(ms));
        }
        assert_eq!(log.max_in_window(Duration::from_secs(1)), 4);
        assert_eq!(log.max_in_window(Duration::from_millis(1)), 1);
        assert_eq!(log.max_in_window(Duration::from_secs(10)), 7);
        assert_eq!(
            Log::<Instant>::new().max_in_window(Duration::from_secs(1)),
            0
        );
    }

    #[test]
    fn in_flight_counts_each_order_apart_and_forgets_finished_requests() {
        let mut f = InFlight::default();
        let ab: BTreeSet<String> = ["A".into(), "B".into()].into();
        let a: BTreeSet<String> = ["A".into()].into();
        assert_eq!(f.enter(&ab), 1);
        assert_eq!(f.enter(&a), 2);
        f.leave(&a);
        assert_eq!(f.enter(&a), 2);
        f.leave(&a);
        f.leave(&ab);
        assert!(f.now.is_empty());
    }
}
