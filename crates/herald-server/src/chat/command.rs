//! The conversation, presence and call commands a socket sends, by canonical name (seed 003's
//! set; seed 001's `TYPING` arrives as `message:typing` through its dialect). Transport-neutral:
//! plain WebSocket and Socket.IO call [`command`] and send the answer as their ack.

use std::future::Future;
use std::pin::Pin;

use herald_core::{ErrorCode, SessionGuard, Topic};
use herald_store::{CallStep, ReceiptKind};
use serde_json::{Value, json};

use super::{Failure, MAX_JOIN_MULTIPLE, MAX_RECEIPT_IDS, PostRequest, conversation, id_field, message_id};
use crate::state::AppState;

/// A command's answer: the ack body, or a stable code and message.
pub type Answer = Pin<Box<dyn Future<Output = Result<Value, Failure>> + Send + 'static>>;

/// The commands this module answers.
pub const COMMANDS: &[&str] = &[
    "message:new",
    "message:edit",
    "message:delete",
    "message:delivered",
    "message:read",
    "message:typing",
    "message:stop-typing",
    "reaction:new",
    "reaction:remove",
    "reaction:get",
    "chat:join",
    "chat:leave",
    "chat:join-multiple",
    "chat:get-active-members",
    "presence:update",
    "presence:subscribe",
    "presence:unsubscribe",
    "call:initiate",
    "call:answer",
    "call:reject",
    "call:end",
    "call:ice-candidate",
];

pub fn is_command(name: &str) -> bool {
    COMMANDS.contains(&name)
}

fn ready(result: Result<Value, Failure>) -> Answer {
    Box::pin(std::future::ready(result))
}

/// The message ids a receipt names: `messageId` or `messageIds`.
fn receipt_ids(data: &Value) -> Result<Vec<i64>, Failure> {
    let ids = match data.get("messageIds") {
        Some(Value::Array(ids)) => ids.iter().map(|id| message_id(Some(id))).collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err((ErrorCode::InvalidPayload, "messageIds must be an array of ids".into())),
        None => vec![message_id(data.get("messageId"))?],
    };
    if ids.is_empty() || ids.len() > MAX_RECEIPT_IDS {
        return Err((ErrorCode::InvalidPayload, format!("name 1 to {MAX_RECEIPT_IDS} messages")));
    }
    Ok(ids)
}

/// A conversation the session has joined (typing needs no store lookup: having joined is
/// the proof of membership).
fn joined(session: &SessionGuard, data: &Value) -> Result<Topic, Failure> {
    let topic = conversation(data)?;
    if session.is_subscribed(&topic) {
        Ok(topic)
    } else {
        Err((ErrorCode::MembershipRequired, format!("join {topic} first (chat:join)")))
    }
}

/// Answers conversation command `name` from `session`, or `None` when `name` is not one.
pub fn command(state: &AppState, session: &SessionGuard, name: &str, data: Value) -> Option<Answer> {
    if !is_command(name) {
        return None;
    }
    let state = state.clone();
    let principal = session.principal().clone();
    let answer: Answer = match name {
        "message:new" => match PostRequest::from_payload(&data) {
            Ok(request) => {
                let temp_id = data.get("tempId").cloned().unwrap_or(Value::Null);
                Box::pin(async move {
                    let message = super::post(&state, &principal, request).await?;
                    let id = message.id.to_string();
                    Ok(json!({"messageId": id, "tempId": temp_id, "message": super::json::message(&message)}))
                })
            }
            Err(failure) => ready(Err(failure)),
        },
        "message:edit" => {
            let content = data.get("content").and_then(Value::as_str).unwrap_or_default().to_owned();
            match message_id(data.get("messageId")) {
                Ok(id) => Box::pin(async move {
                    let message = super::edit(&state, &principal, id, &content).await?;
                    Ok(super::json::edit(&message))
                }),
                Err(failure) => ready(Err(failure)),
            }
        }
        "message:delete" => match message_id(data.get("messageId")) {
            Ok(id) => Box::pin(async move {
                let message = super::delete(&state, &principal, id).await?;
                Ok(super::json::deletion(&message))
            }),
            Err(failure) => ready(Err(failure)),
        },
        "message:delivered" | "message:read" => {
            let kind = if name == "message:read" { ReceiptKind::Read } else { ReceiptKind::Delivered };
            match receipt_ids(&data) {
                Ok(ids) => Box::pin(async move {
                    let changed = super::receipts(&state, &principal, &ids, kind).await?;
                    Ok(json!({"changed": changed}))
                }),
                Err(failure) => ready(Err(failure)),
            }
        }
        "message:typing" | "message:stop-typing" => {
            // Seed 001's `TYPING {isTyping: false}` is a stop.
            let on = name == "message:typing" && data.get("isTyping").and_then(Value::as_bool) != Some(false);
            match joined(session, &data) {
                Ok(topic) => Box::pin(async move { super::typing(&state, &principal, topic, on).await }),
                Err(failure) => ready(Err(failure)),
            }
        }
        "reaction:new" | "reaction:remove" => {
            let add = name == "reaction:new";
            let emoji = data.get("emoji").and_then(Value::as_str).unwrap_or_default().to_owned();
            match message_id(data.get("messageId")) {
                Ok(id) => Box::pin(async move { super::react(&state, &principal, id, &emoji, add).await }),
                Err(failure) => ready(Err(failure)),
            }
        }
        "reaction:get" => match message_id(data.get("messageId")) {
            Ok(id) => Box::pin(async move { super::reactions(&state, &principal, id).await }),
            Err(failure) => ready(Err(failure)),
        },
        "chat:join" => match conversation(&data) {
            Ok(topic) => {
                let id = session.id();
                Box::pin(async move {
                    super::join(&state, id, &principal, &topic).await?;
                    let mut body = json!({"topic": topic.as_str()});
                    body[id_field(&topic)] = Value::from(topic.id());
                    Ok(body)
                })
            }
            Err(failure) => ready(Err(failure)),
        },
        "chat:join-multiple" => {
            let ids: Vec<Value> = match data.get("chatIds").or_else(|| data.get("topics")) {
                Some(Value::Array(ids)) if ids.len() <= MAX_JOIN_MULTIPLE => ids.clone(),
                _ => {
                    let message = format!("chatIds must be an array of at most {MAX_JOIN_MULTIPLE} ids");
                    return Some(ready(Err((ErrorCode::InvalidPayload, message))));
                }
            };
            let id = session.id();
            Box::pin(async move {
                let (mut joined, mut failed) = (Vec::new(), Vec::new());
                for chat in ids {
                    let named = match &chat {
                        Value::String(name) if name.contains(':') => json!({"topic": name}),
                        other => json!({"chatId": other}),
                    };
                    let result = match conversation(&named) {
                        Ok(topic) => super::join(&state, id, &principal, &topic).await.map(|()| topic),
                        Err(failure) => Err(failure),
                    };
                    match result {
                        Ok(topic) => joined.push(Value::from(topic.id())),
                        Err((code, message)) => {
                            failed.push(json!({"chatId": chat, "code": code.as_str(), "message": message}))
                        }
                    }
                }
                Ok(json!({"joined": joined, "failed": failed}))
            })
        }
        "chat:leave" => {
            let result = conversation(&data).map(|topic| {
                session.unsubscribe(&topic);
                let mut body = json!({"topic": topic.as_str()});
                body[id_field(&topic)] = Value::from(topic.id());
                body
            });
            ready(result)
        }
        "chat:get-active-members" => match conversation(&data) {
            Ok(topic) => Box::pin(async move {
                let online = super::online_members(&state, &principal, &topic).await?;
                let mut body = json!({"members": online});
                body[id_field(&topic)] = Value::from(topic.id());
                Ok(body)
            }),
            Err(failure) => ready(Err(failure)),
        },
        "presence:update" => Box::pin(async move { crate::presence::update(&state, &principal, &data).await }),
        "presence:subscribe" => {
            let id = session.id();
            Box::pin(async move { crate::presence::subscribe(&state, id, &principal, &data).await })
        }
        "presence:unsubscribe" => ready(crate::presence::unsubscribe(&state, session.id(), &data)),
        "call:initiate" => Box::pin(async move { crate::calls::initiate(&state, &principal, &data).await }),
        "call:answer" | "call:reject" | "call:end" => {
            let step = match name {
                "call:answer" => CallStep::Answer,
                "call:reject" => CallStep::Reject,
                _ => CallStep::End,
            };
            Box::pin(async move { crate::calls::step(&state, &principal, &data, step).await })
        }
        "call:ice-candidate" => Box::pin(async move { crate::calls::ice_candidate(&state, &principal, &data).await }),
        _ => return None,
    };
    Some(answer)
}
