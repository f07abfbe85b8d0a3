//! The three transports. Each turns frames into hub commands and hub deliveries into
//! frames; none knows about storage or other nodes.

pub mod mailbox;
pub mod socketio;
pub mod sse;
pub mod ws;

use std::sync::{Arc, OnceLock};

use herald_core::{CloseReason, Delivery, OfferError, Outlet};
use tokio_util::sync::CancellationToken;

/// Tells a connection task that the hub closed its session, and why.
#[derive(Debug, Default)]
pub struct CloseSignal {
    token: CancellationToken,
    reason: OnceLock<CloseReason>,
}

impl CloseSignal {
    /// Records the first reason given and wakes the connection task.
    pub fn close(&self, reason: CloseReason) {
        // Only the first reason counts; a later one (e.g. shutdown after a slow-consumer
        // close) must not overwrite what the client is told.
        if self.reason.set(reason).is_err() {
            tracing::trace!(%reason, "session already closing");
        }
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }

    pub async fn closed(&self) {
        self.token.cancelled().await
    }
}

/// An outlet over a bounded channel, drained by the connection's own task
/// (plain WebSocket and SSE).
#[derive(Debug)]
pub struct QueueOutlet {
    sender: mailbox::Sender<Arc<Delivery>>,
    signal: Arc<CloseSignal>,
}

impl QueueOutlet {
    /// An outlet with room for `capacity` deliveries, its receiving end, and its close signal.
    pub fn channel(capacity: usize) -> (Arc<Self>, mailbox::Receiver<Arc<Delivery>>, Arc<CloseSignal>) {
        let (sender, receiver) = mailbox::mailbox(capacity);
        let signal = Arc::new(CloseSignal::default());
        (Arc::new(Self { sender, signal: signal.clone() }), receiver, signal)
    }
}

impl Outlet for QueueOutlet {
    fn offer(&self, delivery: &Arc<Delivery>) -> Result<(), OfferError> {
        self.sender.try_send(delivery.clone()).map_err(|error| match error {
            mailbox::PushError::Full => OfferError::Full,
            mailbox::PushError::Closed => OfferError::Closed,
        })
    }

    fn close(&self, reason: CloseReason) {
        self.signal.close(reason);
    }
}
