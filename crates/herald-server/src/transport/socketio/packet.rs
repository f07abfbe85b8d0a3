//! The text of Engine.IO v4 packets and of the Socket.IO v5 packets they carry.
//!
//! Engine.IO: one type digit, then data — `0` open, `1` close, `2` ping, `3` pong,
//! `4` message, `5` upgrade, `6` noop. Long-polling payloads join packets with `\x1e`.
//! Socket.IO (inside a `4` message): `<type>[<attachments>-][<namespace>,][<ack id>][JSON]`
//! with types `0` connect, `1` disconnect, `2` event, `3` ack, `4` connect error,
//! `5` binary event, `6` binary ack; the namespace is omitted when it is `/`.

use herald_core::Position;
use std::fmt::Write as _;

/// Separates packets in a long-polling payload.
pub const SEPARATOR: char = '\x1e';

/// Largest acknowledgement id accepted (JavaScript's safe integer range).
const MAX_ACK_ID: u64 = (1 << 53) - 1;

/// An Engine.IO packet received from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    Close,
    Ping(&'a str),
    Pong(&'a str),
    Message(&'a str),
    Upgrade,
    Noop,
}

/// A packet that is not valid Engine.IO or Socket.IO.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed packet: {0}")]
pub struct Malformed(pub &'static str);

pub fn parse_engine(text: &str) -> Result<EnginePacket<'_>, Malformed> {
    let rest = text.get(1..).unwrap_or("");
    match text.as_bytes().first() {
        Some(b'1') => Ok(EnginePacket::Close),
        Some(b'2') => Ok(EnginePacket::Ping(rest)),
        Some(b'3') => Ok(EnginePacket::Pong(rest)),
        Some(b'4') => Ok(EnginePacket::Message(rest)),
        Some(b'5') => Ok(EnginePacket::Upgrade),
        Some(b'6') => Ok(EnginePacket::Noop),
        Some(_) => Err(Malformed("unknown engine.io packet type")),
        None => Err(Malformed("empty packet")),
    }
}

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl Kind {
    fn digit(self) -> char {
        match self {
            Kind::Connect => '0',
            Kind::Disconnect => '1',
            Kind::Event => '2',
            Kind::Ack => '3',
            Kind::ConnectError => '4',
            Kind::BinaryEvent => '5',
            Kind::BinaryAck => '6',
        }
    }
}

/// A Socket.IO packet received from a client. `data` is the raw JSON (possibly empty).
#[derive(Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub kind: Kind,
    pub namespace: &'a str,
    pub ack: Option<u64>,
    pub data: &'a str,
}

pub fn parse_socketio(text: &str) -> Result<Packet<'_>, Malformed> {
    let kind = match text.as_bytes().first() {
        Some(b'0') => Kind::Connect,
        Some(b'1') => Kind::Disconnect,
        Some(b'2') => Kind::Event,
        Some(b'3') => Kind::Ack,
        Some(b'4') => Kind::ConnectError,
        Some(b'5') => Kind::BinaryEvent,
        Some(b'6') => Kind::BinaryAck,
        _ => return Err(Malformed("unknown socket.io packet type")),
    };
    let mut rest = &text[1..];
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let dash = rest.find('-').ok_or(Malformed("binary packet without attachment count"))?;
        rest = &rest[dash + 1..];
    }
    let mut namespace = "/";
    if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        namespace = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack = if digits == 0 {
        None
    } else {
        let id: u64 = rest[..digits].parse().map_err(|_| Malformed("ack id out of range"))?;
        if id > MAX_ACK_ID {
            return Err(Malformed("ack id out of range"));
        }
        Some(id)
    };
    Ok(Packet { kind, namespace, ack, data: &rest[digits..] })
}

/// A Socket.IO packet as an Engine.IO message: `4<type>[<namespace>,][<ack id>]<data>`.
pub fn socketio_text(kind: Kind, namespace: &str, ack: Option<u64>, data: &str) -> String {
    let mut text = String::with_capacity(4 + namespace.len() + data.len() + 8);
    text.push('4');
    text.push(kind.digit());
    if namespace != "/" {
        text.push_str(namespace);
        text.push(',');
    }
    if let Some(ack) = ack {
        // Writing into a String cannot fail.
        let _ = write!(text, "{ack}");
    }
    text.push_str(data);
    text
}

/// An event as an Engine.IO message: `42[<namespace>,]["<name>",<data>]`.
///
/// A published event ends with its position as a string argument, as Socket.IO's own
/// connection state recovery does: the official client keeps the last one and sends it
/// back as `offset` when it reconnects.
pub fn event_text(namespace: &str, name: &str, data: &str, position: Option<&Position>) -> String {
    let mut array = String::with_capacity(name.len() + data.len() + 32);
    array.push('[');
    // A &str always serialises.
    array.push_str(&serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into()));
    array.push(',');
    array.push_str(data);
    if let Some(position) = position {
        // An epoch is ASCII letters and digits: no escaping needed.
        array.push_str(&format!(",\"{position}\""));
    }
    array.push(']');
    socketio_text(Kind::Event, namespace, None, &array)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_packets() {
        assert_eq!(parse_engine("2probe"), Ok(EnginePacket::Ping("probe")));
        assert_eq!(parse_engine("3"), Ok(EnginePacket::Pong("")));
        assert_eq!(parse_engine("40"), Ok(EnginePacket::Message("0")));
        assert_eq!(parse_engine("5"), Ok(EnginePacket::Upgrade));
        assert!(parse_engine("").is_err());
        assert!(parse_engine("9").is_err());
    }

    #[test]
    fn socketio_packets_with_namespace_ack_and_data() {
        let packet = parse_socketio("2/notifications,12[\"a\",{}]").unwrap();
        assert_eq!(
            packet,
            Packet { kind: Kind::Event, namespace: "/notifications", ack: Some(12), data: "[\"a\",{}]" }
        );
        let packet = parse_socketio("0{\"token\":\"t\"}").unwrap();
        assert_eq!(packet, Packet { kind: Kind::Connect, namespace: "/", ack: None, data: "{\"token\":\"t\"}" });
        assert_eq!(parse_socketio("1/notifications,").unwrap().namespace, "/notifications");
        assert_eq!(parse_socketio("0/x").unwrap().namespace, "/x");
        assert_eq!(parse_socketio("51-[\"a\",{\"_placeholder\":true,\"num\":0}]").unwrap().kind, Kind::BinaryEvent);
        assert!(parse_socketio("5[\"a\"]").is_err());
        assert!(parse_socketio("299999999999999999999[]").is_err());
        assert!(parse_socketio("x").is_err());
        assert!(parse_socketio("").is_err());
    }

    #[test]
    fn encodes_what_it_parses() {
        assert_eq!(socketio_text(Kind::Ack, "/n", Some(3), "[{}]"), "43/n,3[{}]");
        assert_eq!(socketio_text(Kind::Connect, "/", None, "{\"sid\":\"x\"}"), "40{\"sid\":\"x\"}");
        assert_eq!(event_text("/", "a\"b", "{\"k\":1}", None), "42[\"a\\\"b\",{\"k\":1}]");
        let text = event_text("/notifications", "n", "1", None);
        let packet = parse_socketio(&text[1..]).unwrap();
        assert_eq!((packet.kind, packet.namespace, packet.data), (Kind::Event, "/notifications", "[\"n\",1]"));
    }
}
