//! Single flight: identical concurrent requests share one upstream call. The first caller for a
//! key spawns the call (so a client hanging up cannot cancel it for the others); later callers
//! with the same key wait for its result.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

type Calls<V> = Arc<Mutex<HashMap<String, watch::Receiver<Option<V>>>>>;

pub struct SingleFlight<V> {
    calls: Calls<V>,
}

impl<V> Default for SingleFlight<V> {
    fn default() -> Self {
        Self {
            calls: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// Removes the key when the call ends, even if it panicked.
struct Done<V> {
    calls: Calls<V>,
    key: String,
}

impl<V> Drop for Done<V> {
    fn drop(&mut self) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.remove(&self.key);
    }
}

impl<V: Clone + Send + Sync + 'static> SingleFlight<V> {
    /// Runs `call` unless an identical one is in flight; returns its result and whether this
    /// caller joined another's call. `None` when the call panicked.
    pub async fn run<F, Fut>(&self, key: String, call: F) -> (Option<V>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (mut rx, joined) = {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            match calls.get(&key) {
                Some(rx) => (rx.clone(), true),
                None => {
                    let (tx, rx) = watch::channel(None);
                    calls.insert(key.clone(), rx.clone());
                    let done = Done {
                        calls: self.calls.clone(),
                        key,
                    };
                    let fut = call();
                    tokio::spawn(async move {
                        let value = fut.await;
                        drop(done);
                        let _ = tx.send(Some(value));
                    });
                    (rx, false)
                }
            }
        };
        let value = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        (value, joined)
    }

    pub fn in_flight(&self) -> usize {
        self.calls.lock().map(|c| c.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn concurrent_identical_keys_share_one_call_and_later_ones_call_again() {
        let flight = Arc::new(SingleFlight::<u32>::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (flight, calls) = (flight.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run("k".into(), move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        7
                    })
                    .await
            }));
        }
        let mut joins = 0;
        for t in tasks {
            let (v, joined) = t.await.unwrap();
            assert_eq!(v, Some(7));
            joins += usize::from(joined);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(joins, 9);
        assert_eq!(flight.in_flight(), 0);
        let (v, joined) = flight.run("k".into(), || async { 8 }).await;
        assert_eq!((v, joined), (Some(8), false));
    }

    #[tokio::test]
    async fn a_panicking_call_gives_none_and_frees_the_key() {
        let flight = SingleFlight::<u32>::default();
        let (v, _) = flight.run("p".into(), || async { panic!("boom") }).await;
        assert_eq!(v, None);
        assert_eq!(flight.in_flight(), 0);
    }
}
