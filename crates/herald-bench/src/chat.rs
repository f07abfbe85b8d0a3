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
use tokio_websockets::Message;

use crate::client::{Target, websocket};
use crate::recorder::{Key, Recorder, now_nanos, stamp_of};

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

/// The `"messageId":"N"` of a frame.
fn message_id(frame: &str) -> Option<u64> {
    static MESSAGE_ID: Key = Key::new(r#""messageId":""#);
    MESSAGE_ID.number_after(frame)
}

/// The user number of a typing indicator's `"userId":"userN"`.
fn typing_user(frame: &str) -> Option<usize> {
    static TYPING_USER: Key = Key::new(r#""userId":"user"#);
    TYPING_USER.number_after(frame).and_then(|user| usize::try_from(user).ok())
}

/// The message ids a connection has received, to tell duplicates. A room's messages are
/// numbered as they are stored and arrive almost in order, so this is a sorted vector
/// that ids are mostly appended to (a hash set's inserts were 3.7% of the load
/// generator's CPU in this scenario, measured with perf).
#[derive(Default)]
struct Seen(Vec<u64>);

impl Seen {
    /// Records `id`; false when it had been seen already.
    fn insert(&mut self, id: u64) -> bool {
        match self.0.last() {
            Some(&last) if id <= last => match self.0.binary_search(&id) {
                Ok(_) => false,
                Err(at) => {
                    self.0.insert(at, id);
                    true
                }
            },
            _ => {
                self.0.push(id);
                true
            }
        }
    }
}

/// One member's live connection.
pub struct Member {
    pub connect_time: Duration,
    pub done: tokio::task::JoinHandle<()>,
}

impl Member {
    /// Ends the connection: its task is dropped, and with it the socket, without a close
    /// handshake (the measurement is over by then; a stop signal polled beside the socket
    /// on every frame was 2.6% of the load generator's CPU, measured with perf).
    pub fn close(&mut self) {
        self.done.abort();
    }
}

/// Connects `token`'s user, joins `room`, and starts its task; the first message goes
/// out after `phase`. `user` is the user's number: its slot in `plan.typing_stamps`.
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
        if let Some(text) = message?.as_text()
            && text.starts_with(r#"{"type":"ack""#)
        {
            anyhow::ensure!(text.contains(r#""success":true"#), "join refused: {text}");
            break;
        }
    }
    let connect_time = started.elapsed();
    let room = room.to_owned();
    let done = tokio::spawn(async move {
        let mut seen = Seen::default();
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
            // sends (which would lower the offered load).
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
                    Some(Ok(message)) => if let Some(text) = message.as_text() {
                        if text.starts_with(r#"{"type":"message:new""#) {
                            if message_id(text).is_some_and(|id| !seen.insert(id)) {
                                plan.duplicates.fetch_add(1, Ordering::Relaxed);
                            } else if let Some(stamp) = stamp_of(text) {
                                recorder.record(stamp);
                            }
                        } else if text.starts_with(r#"{"type":"message:typing""#) {
                            let stamp = typing_user(text).and_then(|user| plan.typing_stamps.get(user));
                            if let Some(stamp) = stamp.map(|stamp| stamp.load(Ordering::Relaxed)).filter(|&t| t > 0) {
                                plan.typing.record(stamp);
                            }
                        } else if text.starts_with(r#"{"type":"ack""#) && !text.contains(r#""success":true"#)
                            || text.starts_with(r#"{"type":"error""#)
                        {
                            plan.refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => return,
                },
            }
        }
    });
    Ok(Member { connect_time, done })
}

#[cfg(test)]
mod tests {
    use super::{Seen, message_id, typing_user};

    #[test]
    fn reads_ids_from_frames() {
        let message = r#"{"type":"message:new","payload":{"id":"17","messageId":"17","metadata":{"t":5}}}"#;
        assert_eq!(message_id(message), Some(17));
        let typing = r#"{"type":"message:typing","payload":{"isTyping":true,"roomId":"bench3","userId":"user152"}}"#;
        assert_eq!(typing_user(typing), Some(152));
        assert_eq!(typing_user(r#"{"type":"message:typing","payload":{"userId":"alice"}}"#), None);
        assert_eq!(message_id(typing), None);
    }

    #[test]
    fn tells_ids_seen_before_in_any_order() {
        let mut seen = Seen::default();
        assert!(seen.insert(5));
        assert!(seen.insert(9));
        assert!(seen.insert(7), "an id older than the newest, not seen yet");
        assert!(!seen.insert(7));
        assert!(!seen.insert(9));
        assert!(!seen.insert(5));
        assert!(seen.insert(1));
        assert!(seen.insert(10));
        assert_eq!(seen.0, [1, 5, 7, 9, 10]);
    }
}
