//! The broker: the only path between nodes.
//!
//! A producer hands a [`Publication`] to the broker; the broker carries it to every node
//! (itself included), and each node delivers through its own [`Hub`]. The
//! [`MemoryBroker`] is the single-node default: "every node" is this one.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use crate::event::{Delivery, Event};
use crate::history::{HistoryConfig, MemoryHistory, Position, Recovery};
use crate::hub::Hub;
use crate::principal::UserId;
use crate::topic::Topic;

/// A boxed future, so the broker trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One event addressed to one or more topics.
#[derive(Debug, Clone)]
pub struct Publication {
    pub topics: Vec<Topic>,
    pub event: Event,
    /// When the event entered this node.
    pub accepted_at: Instant,
}

impl Publication {
    pub fn new(topics: Vec<Topic>, event: Event) -> Self {
        Self { topics, event, accepted_at: Instant::now() }
    }
}

/// The broker could not take a publication; the producer must not be told it succeeded.
#[derive(Debug, thiserror::Error)]
#[error("broker unavailable: {0}")]
pub struct BrokerError(pub Box<dyn std::error::Error + Send + Sync>);

/// Carries publications to every node. Implemented by `MemoryBroker` here and by
/// backends in their own crates.
pub trait Broker: Send + Sync + 'static {
    /// Resolves once the publication is handed over, with the position it was given. An
    /// error means it was not, and the producer is told so.
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<Position, BrokerError>>;

    /// What a client at `since` missed on `topics`, at most `limit` events (more is
    /// reported as not recovered).
    fn recover<'a>(
        &'a self,
        topics: &'a [Topic],
        since: &'a Position,
        limit: usize,
    ) -> BoxFuture<'a, Result<Recovery, BrokerError>>;

    /// Resolves once events published to `topics` from now on reach this node's hub
    /// (for Redis: the subscriptions are confirmed). Call after subscribing a session,
    /// before reading history, so nothing falls between the two.
    fn subscribed<'a>(&'a self, _topics: &'a [Topic]) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Whether the broker can currently carry publications (for `/ready`).
    fn is_ready(&self) -> bool;

    /// The live nodes of the cluster and their figures, when the broker spans nodes
    /// (a snapshot refreshed by the broker's heartbeat, never a round trip).
    fn cluster(&self) -> Option<Vec<NodeStats>> {
        None
    }

    /// Whether any node has a subscriber of `topic` now, for events that matter only to
    /// current subscribers (presence changes). `true` when the broker cannot tell.
    fn has_subscribers<'a>(&'a self, _topic: &'a Topic) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(std::future::ready(Ok(true)))
    }

    /// Where `user` is connected across the cluster; `None` when the broker keeps no
    /// shared presence (one node: the hub knows).
    fn presence<'a>(&'a self, _user: &'a UserId) -> BoxFuture<'a, Result<Option<UserPresence>, BrokerError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// A short name for health output, e.g. `memory` or `redis`.
    fn kind(&self) -> &'static str;
}

/// One live node as the cluster registry last saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub id: String,
    pub connections: u64,
    pub unique_users: u64,
    pub topics: u64,
    /// Unix milliseconds of its last heartbeat.
    pub heartbeat_ms: u64,
}

/// A user's connections across the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserPresence {
    pub online: bool,
    pub connections: u64,
    /// The nodes the user is connected to, sorted.
    pub nodes: Vec<String>,
}

/// The single-node broker: a publication goes straight to the local hub, and history
/// is kept in memory.
pub struct MemoryBroker {
    hub: Hub,
    history: MemoryHistory,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl MemoryBroker {
    pub fn new(hub: Hub) -> Self {
        Self::with_history(hub, HistoryConfig::default())
    }

    pub fn with_history(hub: Hub, config: HistoryConfig) -> Self {
        Self { hub, history: MemoryHistory::new(config) }
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<Position, BrokerError>> {
        let Publication { topics, event, accepted_at } = publication;
        let position = self.history.append(&topics, event, |event| {
            let position = event.stream().cloned();
            self.hub.dispatch(&topics, Arc::new(Delivery::accepted_at(event, accepted_at)));
            position
        });
        Box::pin(std::future::ready(position.ok_or_else(|| BrokerError("no position given".into()))))
    }

    fn recover<'a>(
        &'a self,
        topics: &'a [Topic],
        since: &'a Position,
        limit: usize,
    ) -> BoxFuture<'a, Result<Recovery, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.history.recover(topics, since, limit))))
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn has_subscribers<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.hub.subscriber_count(topic) > 0)))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
