//! Bounded admission to the provider: `max_concurrency` calls in flight, at most `queue_depth`
//! waiting for a slot; anything beyond is refused at once (503 + `Retry-After`) instead of piling
//! up. Background workers wait for a slot outside the queue bound: they are few and bounded.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Limiter {
    slots: Arc<Semaphore>,
    max: usize,
    depth: usize,
    waiting: AtomicUsize,
}

/// The queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl Limiter {
    pub fn new(max: usize, depth: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            depth,
            waiting: AtomicUsize::new(0),
        }
    }

    /// A slot, waiting in the bounded queue if all are taken.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, QueueFull> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.depth {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(QueueFull);
        }
        metrics::gauge!("hakikisha_ai_queue_depth").increment(1.0);
        // Decrements even when the waiting caller is cancelled.
        let _waiting = Waiting(self);
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueueFull)
    }

    /// A slot for a background worker: waits as long as needed, outside the queue bound.
    pub async fn acquire_background(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    pub fn in_flight(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Wakes every waiter with `QueueFull`; used at shutdown.
    pub fn close(&self) {
        self.slots.close();
    }
}

struct Waiting<'a>(&'a Limiter);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("hakikisha_ai_queue_depth").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_beyond_slots_plus_queue_and_admits_waiters_in_turn() {
        let limiter = Arc::new(Limiter::new(1, 1));
        let first = limiter.acquire().await.unwrap();
        assert_eq!(limiter.in_flight(), 1);
        let l = limiter.clone();
        let waiter = tokio::spawn(async move { l.acquire().await.map(drop) });
        for _ in 0..100 {
            if limiter.waiting() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(limiter.waiting(), 1);
        assert_eq!(limiter.acquire().await.unwrap_err(), QueueFull);
        drop(first);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(limiter.waiting(), 0);
        assert_eq!(limiter.in_flight(), 0);
    }
}
