//! Wire formats and dialects: how one event looks on each endpoint.
//!
//! Herald has one canonical vocabulary (seed 003's colon names plus
//! `notification:unread-count`). A [`Dialect`] renames events at the edge for clients
//! written against another seed; the renaming is a table, not scattered conditionals.
//! Each (transport, dialect) pair that frames bytes itself owns one [`FormatSlot`], so a
//! delivery is framed at most once per format whatever the number of recipients.

use axum::extract::ws::Utf8Bytes;
use bytes::{BufMut, Bytes, BytesMut};
use herald_core::{Delivery, Event, FormatSlot, Position};

/// Naming conventions of the seeds' clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Canonical names (`/ws`, Socket.IO `/`, SSE `/events`).
    Canonical,
    /// Seed 001 (VELONX community): upper-case names at `/api/community/ws`.
    Community,
    /// Seed 002 (GhostPay): Socket.IO `/notifications` and SSE `/notifications/events`.
    Notifications,
}

/// Canonical name → seed 001 name.
const COMMUNITY_NAMES: &[(&str, &str)] = &[
    ("message:new", "CHAT_MESSAGE"),
    ("message:edit", "MESSAGE_EDIT"),
    ("message:delete", "MESSAGE_DELETE"),
    ("message:typing", "TYPING"),
    ("message:stop-typing", "TYPING"),
    ("chat:member-joined", "USER_JOINED"),
    ("chat:member-left", "USER_LEFT"),
    ("pong", "PONG"),
];

/// Canonical name → seed 002 name.
const NOTIFICATION_NAMES: &[(&str, &str)] =
    &[("notification:new", "notification"), ("notification:unread-count", "unread_count")];

impl Dialect {
    fn table(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Dialect::Canonical => &[],
            Dialect::Community => COMMUNITY_NAMES,
            Dialect::Notifications => NOTIFICATION_NAMES,
        }
    }

    /// The name a client of this dialect knows `canonical` by. Names without an entry
    /// (including producer-chosen ones) pass unchanged.
    pub fn outgoing(self, canonical: &str) -> &str {
        self.table().iter().find(|(from, _)| *from == canonical).map_or(canonical, |(_, to)| to)
    }

    /// The canonical name of an incoming `name` in this dialect.
    pub fn incoming(self, name: &str) -> &str {
        self.table().iter().find(|(_, to)| *to == name).map_or(name, |(from, _)| from)
    }
}

/// `{"type": NAME, "payload": DATA}` for `/ws`, as ready-to-send WebSocket text (its UTF-8
/// check done once, not per recipient).
pub const WS_CANONICAL: FormatSlot<Utf8Bytes> = FormatSlot::new(0);
/// `{"type": NAME, "payload": DATA}` with seed 001 names for `/api/community/ws`.
pub const WS_COMMUNITY: FormatSlot<Utf8Bytes> = FormatSlot::new(1);
/// `id:`/`event:`/`data:` for SSE `/events`.
pub const SSE_CANONICAL: FormatSlot<Bytes> = FormatSlot::new(2);
/// `id:` and `data: {"type": NAME, "data": DATA}` for seed 002's `/notifications/events`.
pub const SSE_NOTIFICATIONS: FormatSlot<Bytes> = FormatSlot::new(3);

/// `42["NAME",DATA]` (Engine.IO message carrying a Socket.IO event) for namespace `/`.
pub const SIO_ROOT: FormatSlot<Utf8Bytes> = FormatSlot::new(4);
/// `42/notifications,["NAME",DATA]` with seed 002's names.
pub const SIO_NOTIFICATIONS: FormatSlot<Utf8Bytes> = FormatSlot::new(5);

/// Writes `text` as a JSON string.
fn put_json_string(buffer: &mut BytesMut, text: &str) {
    let mut writer = buffer.writer();
    // Writing a &str into a Vec-like buffer cannot fail.
    if serde_json::to_writer(&mut writer, text).is_err() {
        writer.get_mut().put_slice(b"\"\"");
    }
}

/// `{"type":NAME,"<field>":DATA}`: the envelope of plain WebSocket frames (`payload`) and
/// of seed 002's SSE messages (`data`).
fn typed_envelope(name: &str, field: &str, data: &str) -> BytesMut {
    let mut buffer = BytesMut::with_capacity(24 + name.len() + data.len());
    buffer.put_slice(b"{\"type\":");
    put_json_string(&mut buffer, name);
    buffer.put_slice(format!(",\"{field}\":").as_bytes());
    buffer.put_slice(data.as_bytes());
    buffer.put_u8(b'}');
    buffer
}

/// A plain WebSocket text frame's body: `{"type":NAME,"payload":DATA}`.
pub fn ws_frame(name: &str, data: &str) -> Bytes {
    typed_envelope(name, "payload", data).freeze()
}

/// A plain WebSocket text frame: `{"type":NAME,"payload":DATA}`.
pub fn ws_text(name: &str, data: &str) -> Utf8Bytes {
    // The envelope is built from two &str and ASCII, so it is UTF-8; the check cannot fail.
    Utf8Bytes::try_from(ws_frame(name, data)).unwrap_or_else(|_| Utf8Bytes::from_static("{}"))
}

/// A published event's frame: `{"type":NAME,"payload":DATA,"offset":N,"epoch":"E"}`,
/// the position fields only when the event has one.
pub fn ws_event_text(name: &str, data: &str, position: Option<&Position>) -> Utf8Bytes {
    let mut buffer = typed_envelope(name, "payload", data);
    if let Some(position) = position {
        buffer.truncate(buffer.len() - 1);
        // An epoch is ASCII letters and digits: no escaping needed.
        buffer.put_slice(format!(",\"offset\":{},\"epoch\":\"{}\"}}", position.offset, position.epoch).as_bytes());
    }
    Utf8Bytes::try_from(buffer.freeze()).unwrap_or_else(|_| Utf8Bytes::from_static("{}"))
}

/// The cached plain WebSocket encoding of a delivery for `dialect`.
pub fn ws_encoded(delivery: &Delivery, dialect: Dialect) -> Utf8Bytes {
    let slot = if dialect == Dialect::Community { WS_COMMUNITY } else { WS_CANONICAL };
    delivery.encoded(slot, |event: &Event| {
        ws_event_text(dialect.outgoing(event.name()), event.data().get(), event.stream())
    })
}

/// The cached Socket.IO encoding of a delivery for the namespace of `dialect`.
pub fn sio_encoded(delivery: &Delivery, dialect: Dialect) -> Utf8Bytes {
    use crate::transport::socketio::{event_text, namespace_of};
    let slot = if dialect == Dialect::Notifications { SIO_NOTIFICATIONS } else { SIO_ROOT };
    delivery.encoded(slot, |event: &Event| {
        let name = dialect.outgoing(event.name());
        Utf8Bytes::from(event_text(namespace_of(dialect), name, event.data().get(), event.stream()))
    })
}

/// One SSE message. `data` must be on one line (events guarantee it).
pub fn sse_message(id: Option<&dyn std::fmt::Display>, name: Option<&str>, data: &str) -> Bytes {
    let mut buffer = BytesMut::with_capacity(32 + data.len());
    if let Some(id) = id {
        buffer.put_slice(format!("id: {id}\n").as_bytes());
    }
    if let Some(name) = name {
        buffer.put_slice(b"event: ");
        buffer.put_slice(name.as_bytes());
        buffer.put_u8(b'\n');
    }
    buffer.put_slice(b"data: ");
    buffer.put_slice(data.as_bytes());
    buffer.put_slice(b"\n\n");
    buffer.freeze()
}

/// Seed 002's SSE message body: `{"type":NAME,"data":DATA}`.
pub fn typed_data(name: &str, data: &str) -> String {
    String::from_utf8_lossy(&typed_envelope(name, "data", data)).into_owned()
}

/// The `id:` of an event: its broker position `epoch:offset` when published through
/// the broker, else a notification's id (a catch-up from the store). Events with
/// neither (Herald's own replies) carry none, so `Last-Event-ID` always names one of
/// the two, and the two forms cannot be confused.
fn sse_id(event: &Event) -> Option<String> {
    match (event.stream(), event.position()) {
        (Some(position), _) => Some(position.to_string()),
        (None, Some(id)) => Some(id.to_string()),
        (None, None) => None,
    }
}

/// The cached SSE encoding of a delivery for `dialect`.
pub fn sse_encoded(delivery: &Delivery, dialect: Dialect) -> Bytes {
    match dialect {
        Dialect::Notifications => delivery.encoded(SSE_NOTIFICATIONS, |event: &Event| {
            let id = sse_id(event);
            let id = id.as_ref().map(|id| id as &dyn std::fmt::Display);
            sse_message(id, None, &typed_data(dialect.outgoing(event.name()), event.data().get()))
        }),
        _ => delivery.encoded(SSE_CANONICAL, |event: &Event| {
            let id = sse_id(event);
            let id = id.as_ref().map(|id| id as &dyn std::fmt::Display);
            sse_message(id, Some(dialect.outgoing(event.name())), event.data().get())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn delivery(name: &str, data: serde_json::Value) -> Delivery {
        Delivery::new(Event::from_value(name, &data).unwrap())
    }

    #[test]
    fn ws_frames_are_json_objects_with_type_and_payload() {
        let frame = ws_encoded(&delivery("notification", json!({"id": "1"})), Dialect::Canonical);
        let value: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(value, json!({"type": "notification", "payload": {"id": "1"}}));
    }

    #[test]
    fn dialects_rename_only_what_their_table_lists() {
        assert_eq!(Dialect::Community.outgoing("message:new"), "CHAT_MESSAGE");
        assert_eq!(Dialect::Community.incoming("TYPING"), "message:typing");
        assert_eq!(Dialect::Community.outgoing("notification"), "notification");
        assert_eq!(Dialect::Notifications.outgoing("notification:unread-count"), "unread_count");
        assert_eq!(Dialect::Canonical.outgoing("notification:new"), "notification:new");
        let frame = ws_encoded(&delivery("message:new", json!({})), Dialect::Community);
        assert!(frame.as_str().starts_with("{\"type\":\"CHAT_MESSAGE\""));
    }

    #[test]
    fn sse_messages_carry_event_and_one_data_line_and_an_id_only_with_a_position() {
        let delivery = delivery("notification", json!({"a": "x\ny"}));
        let text = String::from_utf8(sse_encoded(&delivery, Dialect::Canonical).to_vec()).unwrap();
        assert_eq!(text, "event: notification\ndata: {\"a\":\"x\\ny\"}\n\n");
        let text = String::from_utf8(sse_encoded(&delivery, Dialect::Notifications).to_vec()).unwrap();
        assert_eq!(text, "data: {\"type\":\"notification\",\"data\":{\"a\":\"x\\ny\"}}\n\n");
        let positioned = Delivery::new(Event::from_value("notification:new", &json!({})).unwrap().at_position(42));
        let text = String::from_utf8(sse_encoded(&positioned, Dialect::Notifications).to_vec()).unwrap();
        assert_eq!(text, "id: 42\ndata: {\"type\":\"notification\",\"data\":{}}\n\n");
        let event = Event::from_value("notification:new", &json!({})).unwrap().at_position(42);
        let published = Delivery::new(event.at_stream(Position::new("ep0ch".into(), 7)));
        let text = String::from_utf8(sse_encoded(&published, Dialect::Canonical).to_vec()).unwrap();
        assert_eq!(text, "id: ep0ch:7\nevent: notification:new\ndata: {}\n\n", "the broker position wins");
    }

    #[test]
    fn published_events_carry_their_position_on_every_transport() {
        let event = Event::from_value("n", &json!({"a": 1})).unwrap().at_stream(Position::new("E1".into(), 12));
        let delivery = Delivery::new(event);
        let frame: serde_json::Value =
            serde_json::from_str(ws_encoded(&delivery, Dialect::Canonical).as_str()).unwrap();
        assert_eq!(frame, json!({"type": "n", "payload": {"a": 1}, "offset": 12, "epoch": "E1"}));
        assert_eq!(sio_encoded(&delivery, Dialect::Canonical).as_str(), "42[\"n\",{\"a\":1},\"E1:12\"]");
    }
}
