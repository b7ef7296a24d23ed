//! Admission control for one model: a bounded wait queue in front of a semaphore of
//! sequence slots. A full queue refuses at once (429); a request that waits past the
//! queue timeout gives up (503). Tokio's semaphore is FIFO, so the queue is fair, and a
//! request whose client leaves is dropped from it at once (its future is dropped).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::SchedulerError;

/// Slots and queue of one model.
#[derive(Debug)]
pub struct Admission {
    model: String,
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    waiting: Arc<AtomicUsize>,
    queue_size: usize,
    timeout: Duration,
}

/// A place in the queue; leaving it (drop) frees the place.
#[derive(Debug)]
pub struct QueueTicket {
    waiting: Arc<AtomicUsize>,
    slots: Arc<Semaphore>,
    model: String,
    timeout: Duration,
    entered: Instant,
    counted: bool,
}

impl Admission {
    /// `max_concurrent` slots, `queue_size` waiting places, `timeout` per wait.
    pub fn new(model: &str, max_concurrent: usize, queue_size: usize, timeout: Duration) -> Self {
        Self {
            model: model.to_string(),
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            waiting: Arc::new(AtomicUsize::new(0)),
            queue_size,
            timeout,
        }
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Sequence slots in use (a generation of `n` choices holds up to `n`).
    pub fn running(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
    }

    /// Waits (up to the queue timeout) for `weight` slots at once, for a later generation
    /// of a request that was already admitted through [`Admission::enter`]. All or none,
    /// in FIFO order with every other request: slots that free up while it is at the head
    /// of the queue are kept for it (no one behind it could take them first anyway), and
    /// it runs only with all of them.
    pub async fn acquire(&self, weight: usize) -> Result<OwnedSemaphorePermit, SchedulerError> {
        let entered = Instant::now();
        acquire_within(
            &self.slots,
            self.weight(weight),
            self.timeout,
            &self.model,
            entered,
        )
        .await
    }

    /// Slots one generation of `n` choices takes: one per choice, at most all of them
    /// (the engine then runs the rest of the choices as its sequences free up).
    pub fn weight(&self, n: usize) -> usize {
        n.clamp(1, self.max_concurrent)
    }

    /// Whether [`Admission::enter`] would refuse now.
    pub fn is_full(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) >= self.queue_size + self.slots.available_permits()
    }

    /// Takes a place in the queue, or refuses with 429 when the queue is full.
    pub fn enter(&self) -> Result<QueueTicket, SchedulerError> {
        let mut current = self.waiting.load(Ordering::SeqCst);
        loop {
            if current >= self.queue_size + self.slots.available_permits() {
                return Err(SchedulerError::QueueFull {
                    model: self.model.clone(),
                    queue_size: self.queue_size,
                    retry_after: Duration::from_secs(2),
                });
            }
            match self.waiting.compare_exchange(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        Ok(QueueTicket {
            waiting: self.waiting.clone(),
            slots: self.slots.clone(),
            model: self.model.clone(),
            timeout: self.timeout,
            entered: Instant::now(),
            counted: true,
        })
    }
}

/// Waits for `weight` permits at once (tokio's semaphore hands them out FIFO and holds
/// none of them for a waiter until all are free), until `entered + timeout`.
async fn acquire_within(
    slots: &Arc<Semaphore>,
    weight: usize,
    timeout: Duration,
    model: &str,
    entered: Instant,
) -> Result<OwnedSemaphorePermit, SchedulerError> {
    let remaining = timeout.saturating_sub(entered.elapsed());
    let weight = u32::try_from(weight).unwrap_or(u32::MAX);
    match tokio::time::timeout(remaining, slots.clone().acquire_many_owned(weight)).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) => Err(SchedulerError::ShuttingDown),
        Err(_) => Err(SchedulerError::QueueTimeout {
            model: model.to_string(),
            waited: entered.elapsed(),
            retry_after: Duration::from_secs(5),
        }),
    }
}

impl QueueTicket {
    /// Waits for a slot; the slot is held until the returned permit is dropped.
    pub async fn wait_for_slot(self) -> Result<OwnedSemaphorePermit, SchedulerError> {
        self.wait_for_slots(1).await
    }

    /// Waits for `weight` slots at once (all or none; see [`Admission::weight`]); they are
    /// held until the returned permit is dropped.
    pub async fn wait_for_slots(
        mut self,
        weight: usize,
    ) -> Result<OwnedSemaphorePermit, SchedulerError> {
        let acquired =
            acquire_within(&self.slots, weight, self.timeout, &self.model, self.entered).await;
        self.leave();
        acquired
    }

    /// When this request's wait (for memory, a load and a slot) runs out.
    pub fn deadline(&self) -> Instant {
        self.entered + self.timeout
    }

    fn leave(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_refuses_with_429() {
        let a = Admission::new("m", 1, 1, Duration::from_secs(5));
        let first = a.enter().unwrap().wait_for_slot().await.unwrap();
        let _queued = a.enter().unwrap();
        match a.enter() {
            Err(SchedulerError::QueueFull { .. }) => {}
            other => panic!("{other:?}"),
        }
        drop(first);
    }

    #[tokio::test]
    async fn waiting_past_timeout_is_503() {
        let a = Admission::new("m", 1, 4, Duration::from_millis(50));
        let _held = a.enter().unwrap().wait_for_slot().await.unwrap();
        match a.enter().unwrap().wait_for_slot().await {
            Err(SchedulerError::QueueTimeout { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test]
    async fn weighted_waits_hold_nothing_and_are_fifo() {
        let a = Arc::new(Admission::new("m", 4, 8, Duration::from_secs(5)));
        assert_eq!(a.weight(8), 4);
        assert_eq!(a.weight(0), 1);
        let three = a.enter().unwrap().wait_for_slots(3).await.unwrap();
        // A request for 2 waits for both (the free slot is kept for it, the head of the
        // queue: it runs only with both).
        let a2 = a.clone();
        let pair = tokio::spawn(async move { a2.acquire(2).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!pair.is_finished());
        // FIFO: a single slot asked for later does not overtake the waiting pair.
        let a3 = a.clone();
        let single = tokio::spawn(async move { a3.acquire(1).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!single.is_finished());
        drop(three);
        let pair = pair.await.unwrap().unwrap();
        let single = single.await.unwrap().unwrap();
        assert_eq!(a.running(), 3);
        drop((pair, single));
        assert_eq!(a.running(), 0);
    }

    #[tokio::test]
    async fn dropped_waiter_leaves_the_queue() {
        let a = Arc::new(Admission::new("m", 1, 4, Duration::from_secs(5)));
        let held = a.enter().unwrap().wait_for_slot().await.unwrap();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.enter().unwrap().wait_for_slot().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(a.waiting(), 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(a.waiting(), 0);
        assert_eq!(a.running(), 1);
        drop(held);
        assert_eq!(a.running(), 0);
    }
}
