//! A message as clients see it: seed 001's `CHAT_MESSAGE` fields (`id`, `content`,
//! `roomId`/`groupId`, `authorId`, `authorName`, `authorImage`, `isEdited`, `createdAt`)
//! and seed 003's (`messageId`, `chatId`, `senderId`, `type`, `tempId`, `replyTo`,
//! `forwardedFrom`, `encrypted`, `metadata`) in one object, so that one serialisation
//! serves every dialect. Ids are strings, times RFC 3339 UTC.

use herald_store::Message;
use serde_json::{Value, json};

pub use crate::inbox::json::timestamp;

/// The conversation's id field (`roomId`, `groupId` or `chatId`, after the topic's kind)
/// and the id in it.
fn conversation_id(topic: &str) -> Option<(&'static str, String)> {
    let topic = herald_core::Topic::parse(topic).ok()?;
    Some((super::id_field(&topic), topic.id().to_owned()))
}

fn conversation_fields(data: &mut Value, topic: &str) {
    if let Some((field, id)) = conversation_id(topic) {
        data[field] = Value::from(id);
    }
    data["topic"] = Value::from(topic);
}

/// [`conversation_fields`] for a serialised struct: `{<id field>: id, topic}`, flattened.
#[derive(Debug)]
struct Conversation<'a>(&'a str);

impl serde::Serialize for Conversation<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        if let Some((field, id)) = conversation_id(self.0) {
            map.serialize_entry(field, &id)?;
        }
        map.serialize_entry("topic", self.0)?;
        map.end()
    }
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
    #[serde(flatten)]
    conversation: Conversation<'a>,
}

pub fn message(message: &Message) -> MessageJson<'_> {
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
        conversation: Conversation(&message.topic),
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
