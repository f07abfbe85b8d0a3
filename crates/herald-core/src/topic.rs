//! Typed, validated topic names: `user:{id}`, `channel:{id}`, `room:{id}`, `group:{id}`,
//! `chat:{id}`, `presence:{userId}` (a user's presence changes) and `global`.
//!
//! A [`Topic`] can only be built through [`Topic::parse`] or the typed constructors,
//! so holding one proves the name is well formed.

use std::fmt;
use std::sync::Arc;

use crate::principal::UserId;

/// The longest identifier accepted inside a topic, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// What a topic addresses; decides who may subscribe (see [`crate::access`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicKind {
    User,
    Channel,
    Room,
    Group,
    Chat,
    /// One user's presence changes; subscribed through `presence:subscribe`.
    Presence,
    Global,
}

impl TopicKind {
    /// Rooms, groups and chats: only their members subscribe.
    pub fn needs_membership(self) -> bool {
        matches!(self, TopicKind::Room | TopicKind::Group | TopicKind::Chat)
    }

    /// Kinds whose access the server decides from the store (conversations: membership;
    /// presence: sharing a conversation), then subscribes through `subscribe_member`.
    pub fn checked_by_server(self) -> bool {
        self.needs_membership() || self == TopicKind::Presence
    }

    fn prefix(self) -> &'static str {
        match self {
            TopicKind::User => "user",
            TopicKind::Channel => "channel",
            TopicKind::Room => "room",
            TopicKind::Group => "group",
            TopicKind::Chat => "chat",
            TopicKind::Presence => "presence",
            TopicKind::Global => "global",
        }
    }

    fn from_prefix(prefix: &str) -> Option<Self> {
        Some(match prefix {
            "user" => TopicKind::User,
            "channel" => TopicKind::Channel,
            "room" => TopicKind::Room,
            "group" => TopicKind::Group,
            "chat" => TopicKind::Chat,
            "presence" => TopicKind::Presence,
            _ => return None,
        })
    }
}

/// Why a topic name was refused; the message is safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic must not be empty")]
    Empty,
    #[error("unknown topic kind in {0:?}; expected user:, channel:, room:, group:, chat:, presence: or global")]
    UnknownKind(String),
    #[error("invalid identifier in topic: {0}")]
    InvalidId(IdError),
}

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("identifier must not be empty")]
    Empty,
    #[error("identifier longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("identifier may only contain letters, digits and - _ . @ |")]
    BadCharacter,
}

/// Checks an identifier used in topics and as a user id.
///
/// The alphabet is kept small so that an id can be embedded in a topic, a Redis channel
/// name or a log line without escaping.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '|');
    if !id.chars().all(allowed) {
        return Err(IdError::BadCharacter);
    }
    Ok(())
}

/// A validated topic. Cheap to clone: the name is shared.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    kind: TopicKind,
    /// The canonical text, e.g. `user:42`; kept whole so encoding and hashing need no
    /// formatting.
    name: Arc<str>,
}

impl Topic {
    /// Parses and validates a topic name.
    pub fn parse(text: &str) -> Result<Self, TopicError> {
        if text.is_empty() {
            return Err(TopicError::Empty);
        }
        if text == "global" {
            return Ok(Self::global());
        }
        let Some((prefix, id)) = text.split_once(':') else {
            return Err(TopicError::UnknownKind(truncate(text)));
        };
        let kind = TopicKind::from_prefix(prefix).ok_or_else(|| TopicError::UnknownKind(truncate(text)))?;
        validate_id(id).map_err(TopicError::InvalidId)?;
        Ok(Self { kind, name: Arc::from(text) })
    }

    /// Builds `kind:id` from an id that still has to be validated.
    pub fn with_id(kind: TopicKind, id: &str) -> Result<Self, TopicError> {
        if kind == TopicKind::Global {
            return Ok(Self::global());
        }
        validate_id(id).map_err(TopicError::InvalidId)?;
        Ok(Self { kind, name: Arc::from(format!("{}:{id}", kind.prefix())) })
    }

    /// The topic every session of `user` is subscribed to.
    pub fn user(user: &UserId) -> Self {
        Self { kind: TopicKind::User, name: Arc::from(format!("user:{}", user.as_str())) }
    }

    /// `presence:{id}`: where `user`'s presence changes are published.
    pub fn presence(user: &UserId) -> Self {
        Self { kind: TopicKind::Presence, name: Arc::from(format!("presence:{}", user.as_str())) }
    }

    /// The topic every session is subscribed to.
    pub fn global() -> Self {
        Self { kind: TopicKind::Global, name: Arc::from("global") }
    }

    pub fn kind(&self) -> TopicKind {
        self.kind
    }

    /// The identifier after the colon; empty for `global`.
    pub fn id(&self) -> &str {
        match self.name.split_once(':') {
            Some((_, id)) => id,
            None => "",
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }
}

/// Keeps error messages short when a client sends a huge topic name.
fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", self.name)
    }
}

#[cfg(test)]
mod tests;
