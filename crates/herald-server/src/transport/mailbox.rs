//! A bounded many-producer, one-consumer queue for a connection's outgoing items, sized
//! for hundreds of thousands of idle connections.
//!
//! tokio's bounded `mpsc` costs about 800 bytes per channel before the first message
//! (a cache-padded shared block of ~512 bytes and a first slot block allocated up front;
//! measured with heaptrack, see ARCHITECTURE.md). A mailbox is one small allocation: a
//! lock around a `VecDeque` that allocates only when items arrive, and the consumer's
//! waker. Producers never wait: a full mailbox is the caller's slow consumer.
//!
//! A producer may also close the mailbox with a reason (the hub ending the session). The
//! consumer learns it from [`Receiver::poll_closed`] or [`Receiver::recv`] before any
//! further item; items already queued stay readable with [`Receiver::try_recv`], so a
//! shutting-down connection can still flush them.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use herald_core::CloseReason;
use parking_lot::Mutex;

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    Full,
    Closed,
}

struct State<T> {
    items: VecDeque<T>,
    /// Set by the first [`Sender::close`]; later reasons are ignored.
    closed: Option<CloseReason>,
    receiver_gone: bool,
    /// The consumer task, woken by the next item or the close.
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
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

/// The consuming side; refuses further items when dropped.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A mailbox holding at most `capacity` items.
pub fn mailbox<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { items: VecDeque::new(), closed: None, receiver_gone: false, waker: None }),
        capacity: capacity.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `item` unless the mailbox is full, closed, or its receiver is gone.
    pub fn try_send(&self, item: T) -> Result<(), PushError> {
        let waker = {
            let mut state = self.0.state.lock();
            if state.receiver_gone || state.closed.is_some() {
                return Err(PushError::Closed);
            }
            if state.items.len() >= self.0.capacity {
                return Err(PushError::Full);
            }
            state.items.push_back(item);
            state.waker.take()
        };
        // Woken outside the lock; a consumer that is already awake re-registers only when
        // it finds the mailbox empty, so a burst wakes it once.
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Closes the mailbox for `reason` and wakes the consumer. The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let waker = {
            let mut state = self.0.state.lock();
            if state.closed.is_none() {
                state.closed = Some(reason);
            } else {
                tracing::trace!(%reason, "mailbox already closed");
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// An idle mailbox gives back memory a burst made it grow to, beyond this many items.
const KEEP_CAPACITY: usize = 8;

impl<T> Receiver<T> {
    /// The oldest item, if any, closed or not.
    pub fn try_recv(&mut self) -> Option<T> {
        let mut state = self.0.state.lock();
        let item = state.items.pop_front();
        if state.items.is_empty() && state.items.capacity() > KEEP_CAPACITY {
            state.items.shrink_to(KEEP_CAPACITY);
        }
        item
    }

    /// The close reason, or the oldest item; otherwise registers the task for the next one.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, CloseReason>> {
        let mut state = self.0.state.lock();
        if let Some(reason) = state.closed {
            return Poll::Ready(Err(reason));
        }
        if let Some(item) = state.items.pop_front() {
            if state.items.is_empty() && state.items.capacity() > KEEP_CAPACITY {
                state.items.shrink_to(KEEP_CAPACITY);
            }
            return Poll::Ready(Ok(item));
        }
        register(&mut state.waker, cx);
        Poll::Pending
    }

    /// Ready with the reason once a producer has closed the mailbox.
    pub fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let mut state = self.0.state.lock();
        match state.closed {
            Some(reason) => Poll::Ready(reason),
            None => {
                register(&mut state.waker, cx);
                Poll::Pending
            }
        }
    }

    /// Waits for the oldest item or the close. Cancel-safe: an item is only taken when
    /// returned.
    pub async fn recv(&mut self) -> Result<T, CloseReason> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.receiver_gone = true;
        state.items.clear();
        state.waker = None;
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
        assert_eq!(receiver.recv().await, Ok(1));
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
        assert_eq!(waiting.await.unwrap(), Ok("hello"));
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
        assert_eq!(receiver.recv().await, Ok(1));
        assert_eq!(receiver.recv().await, Ok(2));
    }

    #[tokio::test]
    async fn a_close_wakes_the_receiver_with_the_first_reason_and_keeps_queued_items() {
        let (sender, mut receiver) = mailbox(4);
        sender.try_send(1).unwrap();
        let closer = sender.clone();
        let waiting = tokio::spawn(async move {
            std::future::poll_fn(|cx| receiver.poll_closed(cx)).await;
            receiver
        });
        tokio::task::yield_now().await;
        closer.close(CloseReason::SlowConsumer);
        closer.close(CloseReason::ServerShutdown);
        let mut receiver = waiting.await.unwrap();
        assert_eq!(receiver.recv().await, Err(CloseReason::SlowConsumer));
        assert_eq!(sender.try_send(2), Err(PushError::Closed));
        assert_eq!(receiver.try_recv(), Some(1), "items queued before the close can still be flushed");
        assert_eq!(receiver.try_recv(), None);
    }
}
