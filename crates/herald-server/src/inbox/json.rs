//! A notification as clients see it (seed 000/004's `NotificationPayload`, with seed
//! 003's priority, sound and badge): ids as strings, times as RFC 3339 UTC, the payload
//! exactly as it was given.

use std::time::{Duration, UNIX_EPOCH};

use herald_store::Notification;
use serde::Serialize;
use serde_json::value::RawValue;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    id: String,
    user_id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    payload: &'a RawValue,
    priority: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sound: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    badge: Option<i64>,
    created_at: String,
    delivered_at: Option<String>,
    seen_at: Option<String>,
    read_at: Option<String>,
    is_read: bool,
    /// Seed 002's clients alert on `isNew`; set on pushes, not in lists.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    is_new: bool,
}

/// Milliseconds since the epoch as RFC 3339 with milliseconds, e.g. `2026-12-02T01:02:03.456Z`.
pub fn timestamp(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// The notification's JSON text; `is_new` for pushes of fresh notifications.
pub fn notification_json(notification: &Notification, is_new: bool) -> String {
    let empty = RawValue::NULL;
    let payload: &RawValue = serde_json::from_str(&notification.payload).unwrap_or(empty);
    let wire = Wire {
        id: notification.id.to_string(),
        user_id: &notification.user_id,
        kind: &notification.kind,
        payload,
        priority: notification.priority.as_str(),
        sound: notification.sound.as_deref(),
        badge: notification.badge,
        created_at: timestamp(notification.created_at),
        delivered_at: notification.delivered_at.map(timestamp),
        seen_at: notification.seen_at.map(timestamp),
        read_at: notification.read_at.map(timestamp),
        is_read: notification.read_at.is_some(),
        is_new,
    };
    serde_json::to_string(&wire).unwrap_or_else(|_| "null".to_owned())
}
