//! A bounded many-producer, one-consumer queue for a connection's outgoing items, sized
//! for hundreds of thousands of idle connections.
//!
//! tokio's bounded `mpsc` costs about 800 bytes per channel before the first message
//! (a cache-padded shared block of ~512 bytes and a first slot block allocated up front;
//! measured with heaptrack, see ARCHITECTURE.md). A mailbox is one small allocation: a
//! lock around a `VecDeque` that allocates only when items arrive, and a `Notify`.
//! Producers never wait: a full mailbox is the caller's slow consumer.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    Full,
    Closed,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    ready: Notify,
}

/// The producing side; cheap to clone.
pub struct Sender<T>(Arc<Shared<T>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("capacity", &self.0.capacity).finish_non_exhaustive()
    }
}

/// The consuming side; closes the mailbox when dropped.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A mailbox holding at most `capacity` items.
pub fn mailbox<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { items: VecDeque::new(), closed: false }),
        capacity: capacity.max(1),
        ready: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `item` unless the mailbox is full or its receiver is gone.
    pub fn try_send(&self, item: T) -> Result<(), PushError> {
        {
            let mut state = self.0.state.lock();
            if state.closed {
                return Err(PushError::Closed);
            }
            if state.items.len() >= self.0.capacity {
                return Err(PushError::Full);
            }
            state.items.push_back(item);
        }
        self.0.ready.notify_one();
        Ok(())
    }
}

/// An idle mailbox gives back memory a burst made it grow to, beyond this many items.
const KEEP_CAPACITY: usize = 8;

impl<T> Receiver<T> {
    /// The oldest item, if any.
    pub fn try_recv(&mut self) -> Option<T> {
        let mut state = self.0.state.lock();
        let item = state.items.pop_front();
        if state.items.is_empty() && state.items.capacity() > KEEP_CAPACITY {
            state.items.shrink_to(KEEP_CAPACITY);
        }
        item
    }

    /// Waits for the oldest item. Cancel-safe: an item is only taken when returned.
    pub async fn recv(&mut self) -> T {
        loop {
            if let Some(item) = self.try_recv() {
                return item;
            }
            self.0.ready.notified().await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.closed = true;
        state.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_order_refuses_when_full_and_after_the_receiver_is_gone() {
        let (sender, mut receiver) = mailbox(2);
        assert_eq!(sender.try_send(1), Ok(()));
        assert_eq!(sender.clone().try_send(2), Ok(()));
        assert_eq!(sender.try_send(3), Err(PushError::Full));
        assert_eq!(receiver.recv().await, 1);
        assert_eq!(sender.try_send(4), Ok(()));
        assert_eq!(receiver.try_recv(), Some(2));
        assert_eq!(receiver.try_recv(), Some(4));
        assert_eq!(receiver.try_recv(), None);
        drop(receiver);
        assert_eq!(sender.try_send(5), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_an_item_sent_from_another_task() {
        let (sender, mut receiver) = mailbox(4);
        let waiting = tokio::spawn(async move { receiver.recv().await });
        tokio::task::yield_now().await;
        sender.try_send("hello").unwrap();
        assert_eq!(waiting.await.unwrap(), "hello");
    }

    #[tokio::test]
    async fn an_abandoned_wait_loses_nothing() {
        let (sender, mut receiver) = mailbox(4);
        sender.try_send(1).unwrap();
        sender.try_send(2).unwrap();
        // Wakes, but the select takes the other branch: both items must still be there.
        tokio::select! {
            biased;
            _ = std::future::ready(()) => {}
            _ = receiver.recv() => panic!("the ready branch is polled first"),
        }
        assert_eq!(receiver.recv().await, 1);
        assert_eq!(receiver.recv().await, 2);
    }
}
