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

fn id_text(id: Option<i64>) -> Value {
    id.map_or(Value::Null, |id| Value::from(id.to_string()))
}

/// `message:new` (`CHAT_MESSAGE`), and a message in history pages.
pub fn message(message: &Message) -> Value {
    let metadata = message.metadata.as_deref().and_then(|text| serde_json::from_str(text).ok()).unwrap_or(Value::Null);
    let mut data = json!({
        "id": message.id.to_string(),
        "messageId": message.id.to_string(),
        "content": message.content,
        "type": message.kind,
        "encrypted": message.encrypted,
        "authorId": message.author_id,
        "senderId": message.author_id,
        "authorName": message.author_name,
        "authorImage": message.author_image,
        "replyTo": id_text(message.reply_to),
        "forwardedFrom": id_text(message.forwarded_from),
        "tempId": message.temp_id,
        "metadata": metadata,
        "isEdited": message.edited_at.is_some(),
        "isDeleted": message.deleted_at.is_some(),
        "createdAt": timestamp(message.created_at),
        "editedAt": message.edited_at.map(timestamp),
    });
    conversation_fields(&mut data, &message.topic);
    data
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
