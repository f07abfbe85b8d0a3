//! The `chat` scenario's client: a plain WebSocket member of one room that joins it
//! (`chat:join`), then every interval says it is typing and, a moment later, sends a
//! message (`message:new`) stamped with its send time in `metadata.t`. Every member of the
//! room (the sender's own connection included) records the message's latency when its
//! `message:new` arrives; typing indicators' latency is recorded apart, from the time
//! their sender wrote them.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Target, websocket};
use crate::recorder::{Recorder, now_nanos, stamp_of};

/// What every chat connection shares.
pub struct Plan {
    /// Time between one member's messages.
    pub interval: Duration,
    /// How long before each message its typing indicator goes out (none when zero).
    pub typing_lead: Duration,
    /// Cleared when members must stop sending.
    pub sending: std::sync::atomic::AtomicBool,
    pub sent: AtomicU64,
    pub typing_sent: AtomicU64,
    /// Acks that were not `success: true` (rate limited, refused).
    pub refused: AtomicU64,
    /// Messages a connection received more than once (by message id).
    pub duplicates: AtomicU64,
    /// When each user (by number) last sent its typing indicator, in [`now_nanos`]: the
    /// indicator carries no stamp of its own, and a user's next one is an interval away.
    pub typing_stamps: Vec<AtomicU64>,
    /// Typing indicators' latency: the same path as a message's without the store, so
    /// that the two together show which part of a message's latency is the store's.
    pub typing: Recorder,
}

/// The number that follows `key` in a frame, up to the next quote (`"messageId":"17"`).
fn number_after(frame: &str, key: &str) -> Option<u64> {
    let start = frame.find(key)? + key.len();
    frame[start..].split('"').next()?.parse().ok()
}

/// The `"messageId":"N"` of a frame.
fn message_id(frame: &str) -> Option<u64> {
    number_after(frame, r#""messageId":""#)
}

/// The user number of a typing indicator's `"userId":"userN"`.
fn typing_user(frame: &str) -> Option<usize> {
    number_after(frame, r#""userId":"user"#).and_then(|user| usize::try_from(user).ok())
}

/// One member's live connection.
pub struct Member {
    pub connect_time: Duration,
    stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<()>,
}

impl Member {
    pub fn close(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).unwrap_or_default();
        }
    }
}

/// Connects `token`'s user, joins `room`, and starts its task; the first message goes
/// out after `phase`. `user` is the user's number: its slot in `plan.typing_stamps` and
/// its shard of `recorder`.
#[allow(clippy::too_many_arguments, reason = "one call site, every argument distinct")]
pub async fn join(
    target: &Target,
    token: &str,
    room: &str,
    source: Option<IpAddr>,
    recorder: Arc<Recorder>,
    user: usize,
    plan: Arc<Plan>,
    phase: Duration,
) -> anyhow::Result<Member> {
    let started = Instant::now();
    let mut ws = websocket(target, &format!("/ws?token={token}"), source).await?;
    let join = format!(r#"{{"type":"chat:join","payload":{{"roomId":"{room}"}},"id":"join"}}"#);
    ws.send(Message::text(join)).await?;
    loop {
        let Some(message) = ws.next().await else { anyhow::bail!("closed before joining") };
        if let Message::Text(text) = message?
            && text.starts_with(r#"{"type":"ack""#)
        {
            anyhow::ensure!(text.contains(r#""success":true"#), "join refused: {text}");
            break;
        }
    }
    let connect_time = started.elapsed();
    let (stop, mut stopped) = oneshot::channel::<()>();
    let room = room.to_owned();
    let done = tokio::spawn(async move {
        // Ids seen, hashed with foldhash: SipHash made the inserts 3% of the load
        // generator's CPU (perf).
        let mut seen = foldhash::HashSet::default();
        let first = tokio::time::Instant::now() + phase;
        let mut next_message = first + plan.typing_lead;
        let mut next_typing = (!plan.typing_lead.is_zero()).then_some(first);
        // One timer for the member's life, re-armed only when its deadline moves: a new
        // `sleep_until` per received frame would insert and remove a timer entry for every
        // delivery, CPU taken from the gateway on the same cores.
        let wake_at = |typing: Option<tokio::time::Instant>, message| typing.map_or(message, |t| t.min(message));
        let sleep = tokio::time::sleep_until(wake_at(next_typing, next_message));
        tokio::pin!(sleep);
        loop {
            let wake = wake_at(next_typing, next_message);
            if sleep.deadline() != wake {
                sleep.as_mut().reset(wake);
            }
            // Fixed order, the timer first so that a busy connection never delays its own
            // sends (which would lower the offered load); the rare stop last.
            tokio::select! {
                biased;
                () = &mut sleep, if plan.sending.load(Ordering::Relaxed) => {
                    // The sleep may have been armed before sending stopped.
                    if !plan.sending.load(Ordering::Relaxed) {
                        continue;
                    }
                    let frame = if next_typing.is_some_and(|typing| typing <= next_message) {
                        next_typing = None;
                        plan.typing_sent.fetch_add(1, Ordering::Relaxed);
                        if let Some(stamp) = plan.typing_stamps.get(user) {
                            stamp.store(now_nanos(), Ordering::Relaxed);
                        }
                        format!(r#"{{"type":"message:typing","payload":{{"roomId":"{room}"}}}}"#)
                    } else {
                        next_message += plan.interval;
                        if !plan.typing_lead.is_zero() {
                            next_typing = Some(next_message - plan.typing_lead);
                        }
                        plan.sent.fetch_add(1, Ordering::Relaxed);
                        format!(
                            r#"{{"type":"message:new","payload":{{"roomId":"{room}","content":"hello room","metadata":{{"t":{}}}}},"id":1}}"#,
                            now_nanos()
                        )
                    };
                    if ws.send(Message::text(frame)).await.is_err() {
                        return;
                    }
                }
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if text.starts_with(r#"{"type":"message:new""#) {
                            if message_id(&text).is_some_and(|id| !seen.insert(id)) {
                                plan.duplicates.fetch_add(1, Ordering::Relaxed);
                            } else if let Some(stamp) = stamp_of(&text) {
                                recorder.record(user, stamp);
                            }
                        } else if text.starts_with(r#"{"type":"message:typing""#) {
                            let stamp = typing_user(&text).and_then(|user| plan.typing_stamps.get(user));
                            if let Some(stamp) = stamp.map(|stamp| stamp.load(Ordering::Relaxed)).filter(|&t| t > 0) {
                                plan.typing.record(user, stamp);
                            }
                        } else if text.starts_with(r#"{"type":"ack""#) && !text.contains(r#""success":true"#)
                            || text.starts_with(r#"{"type":"error""#)
                        {
                            plan.refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                },
                _ = &mut stopped => {
                    drop(ws.close(None).await);
                    return;
                }
            }
        }
    });
    Ok(Member { connect_time, stop: Some(stop), done })
}

#[cfg(test)]
mod tests {
    use super::{message_id, typing_user};

    #[test]
    fn reads_ids_from_frames() {
        let message = r#"{"type":"message:new","payload":{"id":"17","messageId":"17","metadata":{"t":5}}}"#;
        assert_eq!(message_id(message), Some(17));
        let typing = r#"{"type":"message:typing","payload":{"isTyping":true,"roomId":"bench3","userId":"user152"}}"#;
        assert_eq!(typing_user(typing), Some(152));
        assert_eq!(typing_user(r#"{"type":"message:typing","payload":{"userId":"alice"}}"#), None);
        assert_eq!(message_id(typing), None);
    }
}
