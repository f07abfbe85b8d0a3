//! The three transports. Each turns frames into hub commands and hub deliveries into
//! frames; none knows about storage or other nodes.

pub mod mailbox;
pub mod socketio;
pub mod sse;
pub mod ws;

use std::sync::Arc;

use herald_core::{CloseReason, Delivery, OfferError, Outlet};

/// An outlet over a bounded mailbox, drained by the connection's own task (plain
/// WebSocket and SSE). The hub closing the session closes the mailbox with the reason.
#[derive(Debug)]
pub struct QueueOutlet {
    sender: mailbox::Sender<Arc<Delivery>>,
}

impl QueueOutlet {
    /// An outlet with room for `capacity` deliveries, and its receiving end.
    pub fn channel(capacity: usize) -> (Arc<Self>, mailbox::Receiver<Arc<Delivery>>) {
        let (sender, receiver) = mailbox::mailbox(capacity);
        (Arc::new(Self { sender }), receiver)
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
        self.sender.close(reason);
    }
}
