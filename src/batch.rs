//! Batching of concurrent work items: each caller queues an item (carrying its own reply
//! channel) and a task takes whatever has queued while earlier batches were out, up to a
//! maximum, and runs it as one batch. An idle service sends batches of one and adds no wait;
//! a busy one pays one round trip per batch instead of one per request. Used by the Redis rate
//! limiter (one script call per batch of decisions) and the uncached claim read (one query per
//! batch of ids).

use std::{future::Future, sync::Arc};

use tokio::sync::{Semaphore, mpsc};

/// The queue of one batched operation. Dropping it (every clone) ends its task once queued
/// batches are run.
pub struct Batcher<T> {
    queue: mpsc::UnboundedSender<T>,
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts the task on the current runtime: batches of at most `max` items, at most
    /// `in_flight` batches running at once (new items queue meanwhile), each run by `run`.
    pub fn start<F, Fut>(max: usize, in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (queue, mut items) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        let max = max.max(1);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                if items.recv_many(&mut batch, max).await == 0 {
                    return;
                }
                let taken = std::mem::replace(&mut batch, Vec::with_capacity(max));
                let running = run(taken);
                tokio::spawn(async move {
                    running.await;
                    drop(slot);
                });
            }
        });
        Self { queue }
    }

    /// Queues `item`; gives it back when the task has stopped (the runtime is shutting down).
    pub fn send(&self, item: T) -> Result<(), T> {
        self.queue.send(item).map_err(|e| e.0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn items_queued_while_a_batch_runs_go_out_together_in_order() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::start(3, 1, move |batch: Vec<(u32, oneshot::Sender<u32>)>| {
            seen.lock().unwrap().push(batch.len());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                for (n, reply) in batch {
                    let _ = reply.send(n * 10);
                }
            }
        });
        let mut answers = Vec::new();
        for n in 0..7 {
            let (reply, answer) = oneshot::channel();
            assert!(batcher.send((n, reply)).is_ok());
            answers.push(answer);
        }
        let mut got = Vec::new();
        for answer in answers {
            got.push(answer.await.unwrap());
        }
        assert_eq!(got, [0, 10, 20, 30, 40, 50, 60]);
        // All seven queued before the task ran: batches of at most three, one at a time.
        assert_eq!(*sizes.lock().unwrap(), [3, 3, 1]);
    }
}
