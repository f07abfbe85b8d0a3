//! Events and their once-per-format encodings.
//!
//! An [`Event`] holds its payload as already-serialised JSON ([`RawValue`]), so the data
//! is serialised once, when the event enters Herald. A [`Delivery`] wraps one event on
//! its way to many sessions and caches one encoding per wire format: the first session
//! of a format pays for the framing, every other one gets a clone of the same bytes.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::value::RawValue;

use crate::history::Position;
use crate::principal::UserId;

/// The longest event name accepted, in bytes.
pub const MAX_EVENT_NAME_LEN: usize = 100;

/// How many distinct wire formats a delivery can cache. Transports pick their slots.
pub const FORMAT_SLOTS: usize = 8;

/// Names one cached encoding of a delivery and the type it is cached as (e.g. `Bytes`,
/// or a transport's ready-to-send text type). Transports define one constant per format.
#[derive(Debug)]
pub struct FormatSlot<T> {
    index: usize,
    kind: PhantomData<fn() -> T>,
}

impl<T> Clone for FormatSlot<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for FormatSlot<T> {}

impl<T> FormatSlot<T> {
    /// # Panics
    /// At compile time (in a `const`) or start-up when `index >= FORMAT_SLOTS`: a slot is a
    /// fixed table index chosen by the transport author, not runtime input.
    pub const fn new(index: usize) -> Self {
        assert!(index < FORMAT_SLOTS, "format slot out of range");
        Self { index, kind: PhantomData }
    }
}

/// Why an event could not be built from producer input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event name must not be empty")]
    EmptyName,
    #[error("event name longer than {MAX_EVENT_NAME_LEN} bytes")]
    NameTooLong,
    #[error("event name may not contain control characters or quotes")]
    BadName,
    #[error("payload could not be serialised as JSON")]
    BadPayload,
}

/// A named event with a JSON payload.
#[derive(Debug, Clone)]
pub struct Event {
    name: Arc<str>,
    data: Arc<RawValue>,
    /// Where the event stands in a resumable stream (a notification's id), if anywhere;
    /// SSE sends it as `id:` so that a reconnecting client's `Last-Event-ID` names it.
    position: Option<u64>,
    /// Where the event stands in the broker's stream (see `history`), once published.
    stream: Option<Position>,
    /// The user whose action the event reports (a message's author, a typing user):
    /// sessions of users who blocked them do not get it.
    sender: Option<UserId>,
    /// What every node's hub does besides delivering the event.
    directive: Option<Arc<Directive>>,
}

/// Session state an event changes on every node, applied by the hub as it delivers
/// (so it travels with the event, in order, through any broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    /// After delivering, unsubscribe this user's sessions from the event's topics (a
    /// member was removed from a conversation).
    Unsubscribe(UserId),
    /// Replace the block list of this user's sessions (published on the user's topic).
    Blocks { user: UserId, blocked: Arc<[UserId]> },
}

impl Event {
    /// Builds an event, validating the name. The payload is already valid JSON; line
    /// breaks (which valid JSON only has as whitespace) are removed so that every wire
    /// format, SSE `data:` lines included, carries it on one line.
    pub fn new(name: &str, data: Box<RawValue>) -> Result<Self, EventError> {
        validate_event_name(name)?;
        let data = if data.get().contains(['\n', '\r']) {
            let single_line: String = data.get().chars().filter(|c| !matches!(c, '\n' | '\r')).collect();
            RawValue::from_string(single_line).map_err(|_| EventError::BadPayload)?
        } else {
            data
        };
        Ok(Self::bare(name, data))
    }

    /// An event Herald itself emits under a constant name it knows to be valid, with
    /// payload text it built (single-line JSON); skips the checks of [`Event::new`].
    pub fn internal(name: &'static str, data: Box<RawValue>) -> Self {
        debug_assert!(validate_event_name(name).is_ok(), "invalid internal event name {name:?}");
        Self::bare(name, data)
    }

    /// An event with no position, sender or directive yet.
    fn bare(name: &str, data: Box<RawValue>) -> Self {
        Self {
            name: Arc::from(name),
            data: Arc::from(data),
            position: None,
            stream: None,
            sender: None,
            directive: None,
        }
    }

    /// Builds an event from a serialisable value; for events Herald itself emits.
    pub fn from_value<T: serde::Serialize>(name: &str, data: &T) -> Result<Self, EventError> {
        let raw = serde_json::value::to_raw_value(data).map_err(|_| EventError::BadPayload)?;
        Self::new(name, raw)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The event with a stream position (see [`Event::position`]).
    pub fn at_position(mut self, position: u64) -> Self {
        self.position = Some(position);
        self
    }

    pub fn position(&self) -> Option<u64> {
        self.position
    }

    /// The event with its broker stream position.
    pub fn at_stream(mut self, position: Position) -> Self {
        self.stream = Some(position);
        self
    }

    /// The event's broker stream position, once published (see `history`).
    pub fn stream(&self) -> Option<&Position> {
        self.stream.as_ref()
    }

    /// The event as reported by `user` (see [`Event::sender`]).
    pub fn from_sender(mut self, user: UserId) -> Self {
        self.sender = Some(user);
        self
    }

    /// The user whose action this event reports; sessions that blocked them skip it.
    pub fn sender(&self) -> Option<&UserId> {
        self.sender.as_ref()
    }

    /// The event with session state to change on delivery.
    pub fn with_directive(mut self, directive: Directive) -> Self {
        self.directive = Some(Arc::new(directive));
        self
    }

    pub fn directive(&self) -> Option<&Directive> {
        self.directive.as_deref()
    }

    /// The payload, exactly as it will appear on the wire.
    pub fn data(&self) -> &RawValue {
        &self.data
    }
}

/// Checks a producer-chosen event name: it becomes a Socket.IO event name, a JSON string
/// and an SSE `event:` line, so control characters and quotes are refused.
pub fn validate_event_name(name: &str) -> Result<(), EventError> {
    if name.is_empty() {
        return Err(EventError::EmptyName);
    }
    if name.len() > MAX_EVENT_NAME_LEN {
        return Err(EventError::NameTooLong);
    }
    if name.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        return Err(EventError::BadName);
    }
    Ok(())
}

/// Numbers deliveries on this node (for logs and ordering checks).
static NEXT_DELIVERY_ID: AtomicU64 = AtomicU64::new(1);

/// One event on its way to many sessions, with its encodings cached per wire format.
#[derive(Debug)]
pub struct Delivery {
    event: Event,
    id: u64,
    /// When the event entered the node; used for the publish-to-enqueue histogram.
    accepted_at: Instant,
    encoded: [OnceLock<Box<dyn Any + Send + Sync>>; FORMAT_SLOTS],
}

impl Delivery {
    pub fn new(event: Event) -> Self {
        Self::accepted_at(event, Instant::now())
    }

    pub fn accepted_at(event: Event, accepted_at: Instant) -> Self {
        let id = NEXT_DELIVERY_ID.fetch_add(1, Ordering::Relaxed);
        Self { event, id, accepted_at, encoded: Default::default() }
    }

    pub fn event(&self) -> &Event {
        &self.event
    }

    /// A node-local, increasing number for this delivery.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn accepted_instant(&self) -> Instant {
        self.accepted_at
    }

    /// The event in the format of `slot`, encoded by `encode` the first time only; later
    /// calls get a clone of the cached value (for `Bytes`, the same buffer).
    pub fn encoded<T: Clone + Send + Sync + 'static>(&self, slot: FormatSlot<T>, encode: impl Fn(&Event) -> T) -> T {
        let cached = self.encoded[slot.index].get_or_init(|| Box::new(encode(&self.event)));
        match cached.downcast_ref::<T>() {
            Some(value) => value.clone(),
            // Two slot constants of different types share an index: a transport bug that
            // costs an encoding per call, never a wrong frame.
            None => encode(&self.event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn encodes_once_per_slot() {
        let event = Event::from_value("notification", &serde_json::json!({"a": 1})).unwrap();
        let delivery = Delivery::new(event);
        let calls = AtomicUsize::new(0);
        let encode = |event: &Event| {
            calls.fetch_add(1, Ordering::SeqCst);
            Bytes::from(format!("{}={}", event.name(), event.data().get()))
        };
        let slot_a: FormatSlot<Bytes> = FormatSlot::new(0);
        let slot_b: FormatSlot<Bytes> = FormatSlot::new(1);
        for _ in 0..100 {
            assert_eq!(delivery.encoded(slot_a, encode), Bytes::from("notification={\"a\":1}"));
        }
        delivery.encoded(slot_b, encode);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The same index read as another type is encoded afresh, never mistyped.
        let clash: FormatSlot<String> = FormatSlot::new(0);
        assert_eq!(delivery.encoded(clash, |event| event.name().to_owned()), "notification");
    }

    #[test]
    fn line_breaks_in_payload_whitespace_are_removed() {
        let pretty = RawValue::from_string("{\n  \"a\": \"x\\ny\",\r\n  \"b\": [1,\n2]\n}".into()).unwrap();
        let event = Event::new("e", pretty).unwrap();
        assert!(!event.data().get().contains(['\n', '\r']));
        let value: serde_json::Value = serde_json::from_str(event.data().get()).unwrap();
        assert_eq!(value, serde_json::json!({"a": "x\ny", "b": [1, 2]}));
    }

    #[test]
    fn event_names_are_validated() {
        let data = || RawValue::from_string("{}".into()).unwrap();
        assert_eq!(Event::new("", data()).unwrap_err(), EventError::EmptyName);
        assert_eq!(Event::new("a\nb", data()).unwrap_err(), EventError::BadName);
        assert_eq!(Event::new("a\"b", data()).unwrap_err(), EventError::BadName);
        assert_eq!(Event::new(&"x".repeat(101), data()).unwrap_err(), EventError::NameTooLong);
        assert!(Event::new("message:new", data()).is_ok());
    }
}
