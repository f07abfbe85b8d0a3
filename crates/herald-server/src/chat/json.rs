//! A message as clients see it: seed 001's `CHAT_MESSAGE` fields (`id`, `content`,
//! `roomId`/`groupId`, `authorId`, `authorName`, `authorImage`, `isEdited`, `createdAt`)
//! and seed 003's (`messageId`, `chatId`, `senderId`, `type`, `tempId`, `replyTo`,
//! `forwardedFrom`, `encrypted`, `metadata`) in one object, so that one serialisation
//! serves every dialect. Ids are strings, times RFC 3339 UTC.

use herald_store::Message;
use serde_json::{Value, json};

pub use crate::inbox::json::timestamp;

fn conversation_fields(data: &mut Value, topic: &str) {
    if let Ok(topic) = herald_core::Topic::parse(topic) {
        data[super::id_field(&topic)] = Value::from(topic.id());
    }
    data["topic"] = Value::from(topic);
}

/// `message:new` (`CHAT_MESSAGE`), and a message in history pages: serialised straight
/// from the stored message, with no intermediate `Value` (one is built per message posted).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageJson<'a> {
    id: String,
    message_id: String,
    content: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    encrypted: bool,
    author_id: &'a str,
    sender_id: &'a str,
    author_name: Option<&'a str>,
    author_image: Option<&'a str>,
    reply_to: Option<String>,
    forwarded_from: Option<String>,
    temp_id: Option<&'a str>,
    /// The stored JSON text as it is; `null` when absent (or, never expected, unreadable).
    metadata: Option<&'a serde_json::value::RawValue>,
    is_edited: bool,
    is_deleted: bool,
    created_at: String,
    edited_at: Option<String>,
    /// One of the three, after the topic's kind (see [`super::id_field`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    room_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat_id: Option<String>,
    topic: &'a str,
}

pub fn message(message: &Message) -> MessageJson<'_> {
    let (mut room_id, mut group_id, mut chat_id) = (None, None, None);
    if let Ok(topic) = herald_core::Topic::parse(&message.topic) {
        let slot = match super::id_field(&topic) {
            "roomId" => &mut room_id,
            "groupId" => &mut group_id,
            _ => &mut chat_id,
        };
        *slot = Some(topic.id().to_owned());
    }
    MessageJson {
        id: message.id.to_string(),
        message_id: message.id.to_string(),
        content: &message.content,
        kind: &message.kind,
        encrypted: message.encrypted,
        author_id: &message.author_id,
        sender_id: &message.author_id,
        author_name: message.author_name.as_deref(),
        author_image: message.author_image.as_deref(),
        reply_to: message.reply_to.map(|id| id.to_string()),
        forwarded_from: message.forwarded_from.map(|id| id.to_string()),
        temp_id: message.temp_id.as_deref(),
        metadata: message.metadata.as_deref().and_then(|text| serde_json::from_str(text).ok()),
        is_edited: message.edited_at.is_some(),
        is_deleted: message.deleted_at.is_some(),
        created_at: timestamp(message.created_at),
        edited_at: message.edited_at.map(timestamp),
        room_id,
        group_id,
        chat_id,
        topic: &message.topic,
    }
}

/// `message:edit` (`MESSAGE_EDIT`): `{messageId, content, roomId, editedAt}`.
pub fn edit(message: &Message) -> Value {
    let mut data = json!({
        "messageId": message.id.to_string(),
        "content": message.content,
        "editedAt": message.edited_at.map(timestamp),
    });
    conversation_fields(&mut data, &message.topic);
    data
}

/// `message:delete` (`MESSAGE_DELETE`): `{messageId, roomId}`.
pub fn deletion(message: &Message) -> Value {
    let mut data = json!({"messageId": message.id.to_string()});
    conversation_fields(&mut data, &message.topic);
    data
}
