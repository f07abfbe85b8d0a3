//! Herald's core: the hub that knows who is connected, what each session listens to,
//! and how one published event reaches every subscriber.
//!
//! Invariants kept here:
//! - No network, HTTP, database or Redis dependency: transports and backends plug in
//!   through the [`Outlet`] and [`Broker`] traits.
//! - A published event's payload is serialised once; each wire format encodes it at most
//!   once per delivery ([`Delivery::encoded`]), whatever the number of recipients.
//! - Every session is reached through a bounded outlet; an outlet that is full gets the
//!   session closed with [`CloseReason::SlowConsumer`], never a growing buffer.
//! - Access decisions ([`access::check_subscribe`]) are made here, not in transports.

pub mod access;
pub mod broker;
pub mod error;
pub mod event;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod principal;
pub mod topic;

pub use access::check_subscribe;
pub use broker::{BoxFuture, Broker, BrokerError, MemoryBroker, NodeStats, Publication, UserPresence};
pub use error::{CloseReason, ErrorCode};
pub use event::{Delivery, Directive, Event, EventError, FormatSlot};
pub use history::{HistoryConfig, Position, Recovery};
pub use hub::{Attendance, Hold, Hub, Interest, OfferError, Outlet, SessionGuard, SessionId};
pub use principal::{Principal, UserId};
pub use topic::{Topic, TopicError, TopicKind};
