//! Stream positions and recent history, so a reconnecting client gets what it missed.
//!
//! Every publication gets one [`Position`]: the broker's `epoch` and an `offset` that
//! grows by one per publication across all topics. Each topic keeps its recent events
//! (a bounded number, for a bounded time). A client that comes back with the last
//! position it saw gets, for each topic it listens to, the events after it, or learns
//! that some are gone ([`Recovery::recovered`] is false) and refetches its state.
//!
//! One offset sequence for all topics means a client keeps a single position, however
//! many topics it listens to: events reach a session in offset order, so everything at
//! or below the last offset it saw has been given to it.
//!
//! [`MemoryHistory`] is the single-node implementation; the Redis broker keeps the same
//! structure in Redis (see `herald-redis`).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::event::Event;
use crate::topic::Topic;

/// Longest epoch accepted from a client.
pub const MAX_EPOCH_LEN: usize = 32;

/// Where an event stands in the broker's stream: `epoch:offset` on the wire.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// Changes when the stream's state is lost (a restarted node, an emptied Redis):
    /// positions of another epoch say nothing about this one.
    pub epoch: Arc<str>,
    pub offset: u64,
}

impl Position {
    pub fn new(epoch: Arc<str>, offset: u64) -> Self {
        Self { epoch, offset }
    }

    /// Parses `epoch:offset` (an SSE `Last-Event-ID`, a `?since=`, a Socket.IO offset).
    pub fn parse(text: &str) -> Option<Self> {
        let (epoch, offset) = text.trim().rsplit_once(':')?;
        if !valid_epoch(epoch) {
            return None;
        }
        Some(Self { epoch: Arc::from(epoch), offset: offset.parse().ok()? })
    }
}

/// An epoch is 1 to [`MAX_EPOCH_LEN`] ASCII letters and digits.
pub fn valid_epoch(epoch: &str) -> bool {
    !epoch.is_empty() && epoch.len() <= MAX_EPOCH_LEN && epoch.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A fresh random epoch: 12 ASCII letters and digits.
pub fn new_epoch() -> Arc<str> {
    use rand::Rng;
    let text: String = rand::rng().sample_iter(&rand::distr::Alphanumeric).take(12).map(char::from).collect();
    Arc::from(text)
}

/// How much history each topic keeps.
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// Most events kept per topic; 0 keeps none (positions are still given).
    pub size: usize,
    /// How long an event stays recoverable.
    pub max_age: Duration,
    /// Most topics with history on one node (memory broker only); the least recently
    /// published is forgotten first.
    pub max_topics: usize,
    /// Most events kept in all on one node (memory broker only); the oldest go first.
    pub max_events: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self { size: 100, max_age: Duration::from_secs(300), max_topics: 100_000, max_events: 100_000 }
    }
}

/// What a returning client gets.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The stream's current position.
    pub current: Position,
    /// True when `events` is everything the client missed on the topics asked for.
    pub recovered: bool,
    /// The missed events in offset order, each with its position; empty when not
    /// recovered.
    pub events: Vec<Event>,
}

impl Recovery {
    /// Nothing can be given: another epoch, a position from the future, or a gap.
    pub fn lost(current: Position) -> Self {
        Self { current, recovered: false, events: Vec::new() }
    }
}

struct Entry {
    offset: u64,
    at_ms: u64,
    event: Event,
}

#[derive(Default)]
struct TopicHistory {
    entries: VecDeque<Entry>,
    /// The offset of the last event published to the topic.
    top: u64,
    /// Every event at or below this offset that was trimmed away.
    trimmed_through: u64,
    last_ms: u64,
}

struct State {
    offset: u64,
    topics: HashMap<Topic, TopicHistory>,
    /// Every entry appended, oldest first, to keep `max_events`; an entry already trimmed
    /// from its topic is skipped when it comes up.
    order: VecDeque<(u64, Topic)>,
    /// The highest `top` of any forgotten topic: a client behind it may have missed
    /// events of a topic no longer known.
    forgotten_through: u64,
}

/// Positions and per-topic history of one node (the memory broker's).
pub struct MemoryHistory {
    config: HistoryConfig,
    epoch: Arc<str>,
    state: Mutex<State>,
    started: tokio::time::Instant,
}

impl fmt::Debug for MemoryHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryHistory").field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

/// How often (in publications) expired topics are looked for.
const SWEEP_EVERY: u64 = 4096;

impl MemoryHistory {
    pub fn new(config: HistoryConfig) -> Self {
        Self {
            config,
            epoch: new_epoch(),
            state: Mutex::new(State {
                offset: 0,
                topics: HashMap::new(),
                order: VecDeque::new(),
                forgotten_through: 0,
            }),
            started: tokio::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn current(&self) -> Position {
        Position::new(self.epoch.clone(), self.state.lock().offset)
    }

    /// Gives the event the next position and records it under each topic. Returns the
    /// positioned event. `deliver` runs with the position taken and the history locked,
    /// so publications reach the hub in offset order.
    pub fn append<R>(&self, topics: &[Topic], event: Event, deliver: impl FnOnce(Event) -> R) -> R {
        let now = self.now_ms();
        let mut state = self.state.lock();
        state.offset += 1;
        let offset = state.offset;
        let event = event.at_stream(Position::new(self.epoch.clone(), offset));
        if self.config.size > 0 {
            let max_age = self.config.max_age.as_millis() as u64;
            if offset.is_multiple_of(SWEEP_EVERY) {
                forget_expired(&mut state, now.saturating_sub(max_age));
            }
            for topic in topics {
                if !state.topics.contains_key(topic) && state.topics.len() >= self.config.max_topics {
                    forget_oldest(&mut state);
                }
                let history = state.topics.entry(topic.clone()).or_default();
                history.entries.push_back(Entry { offset, at_ms: now, event: event.clone() });
                while history.entries.len() > self.config.size {
                    if let Some(old) = history.entries.pop_front() {
                        history.trimmed_through = old.offset;
                    }
                }
                history.top = offset;
                history.last_ms = now;
                state.order.push_back((offset, topic.clone()));
            }
            while state.order.len() > self.config.max_events.max(1) {
                let Some((oldest, topic)) = state.order.pop_front() else { break };
                if let Some(history) = state.topics.get_mut(&topic)
                    && history.entries.front().is_some_and(|entry| entry.offset == oldest)
                {
                    history.entries.pop_front();
                    history.trimmed_through = oldest;
                }
            }
        } else {
            // No history: remember only that the topics moved on, so recovery says so.
            state.forgotten_through = offset;
        }
        deliver(event)
    }

    /// What a client at `since` missed on `topics`: at most `limit` events.
    pub fn recover(&self, topics: &[Topic], since: &Position, limit: usize) -> Recovery {
        let oldest_ms = self.now_ms().saturating_sub(self.config.max_age.as_millis() as u64);
        let state = self.state.lock();
        let current = Position::new(self.epoch.clone(), state.offset);
        if since.epoch != self.epoch || since.offset > state.offset {
            return Recovery::lost(current);
        }
        let mut events: Vec<&Entry> = Vec::new();
        for topic in topics {
            let Some(history) = state.topics.get(topic) else {
                if since.offset < state.forgotten_through {
                    return Recovery::lost(current);
                }
                continue;
            };
            if history.top <= since.offset {
                continue;
            }
            if history.trimmed_through > since.offset {
                return Recovery::lost(current);
            }
            for entry in history.entries.iter().filter(|entry| entry.offset > since.offset) {
                if entry.at_ms < oldest_ms {
                    return Recovery::lost(current);
                }
                events.push(entry);
            }
        }
        events.sort_by_key(|entry| entry.offset);
        events.dedup_by_key(|entry| entry.offset);
        if events.len() > limit {
            return Recovery::lost(current);
        }
        Recovery { current, recovered: true, events: events.into_iter().map(|entry| entry.event.clone()).collect() }
    }
}

fn forget(state: &mut State, topic: &Topic) {
    if let Some(history) = state.topics.remove(topic) {
        state.forgotten_through = state.forgotten_through.max(history.top);
    }
}

fn forget_expired(state: &mut State, oldest_ms: u64) {
    let expired: Vec<Topic> = state
        .topics
        .iter()
        .filter(|(_, history)| history.last_ms < oldest_ms)
        .map(|(topic, _)| topic.clone())
        .collect();
    for topic in expired {
        forget(state, &topic);
    }
}

fn forget_oldest(state: &mut State) {
    let oldest = state.topics.iter().min_by_key(|(_, history)| history.top).map(|(topic, _)| topic.clone());
    if let Some(topic) = oldest {
        forget(state, &topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> Event {
        Event::from_value("e", &serde_json::json!({ "n": n })).unwrap()
    }

    fn topic(name: &str) -> Topic {
        Topic::parse(name).unwrap()
    }

    fn publish(history: &MemoryHistory, topics: &[&str], n: u64) -> Position {
        let topics: Vec<Topic> = topics.iter().map(|t| topic(t)).collect();
        history.append(&topics, event(n), |event| event.stream().cloned().unwrap())
    }

    fn numbers(recovery: &Recovery) -> Vec<u64> {
        recovery
            .events
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(e.data().get()).unwrap()["n"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn positions_parse_and_print() {
        let position = Position::parse("abc123:42").unwrap();
        assert_eq!(position.to_string(), "abc123:42");
        assert!(Position::parse("42").is_none());
        assert!(Position::parse("a-b:1").is_none());
        assert!(Position::parse(":1").is_none());
        assert!(Position::parse("abc:x").is_none());
        assert!(Position::parse(&format!("{}:1", "a".repeat(33))).is_none());
        assert_ne!(new_epoch(), new_epoch());
        assert!(valid_epoch(&new_epoch()));
    }

    #[test]
    fn recovers_missed_events_of_the_topics_asked_for_in_order() {
        let history = MemoryHistory::new(HistoryConfig::default());
        let start = publish(&history, &["channel:a"], 1);
        publish(&history, &["channel:b"], 2);
        publish(&history, &["channel:a", "channel:b"], 3);
        publish(&history, &["channel:c"], 4);
        let recovery = history.recover(&[topic("channel:a"), topic("channel:b")], &start, 10);
        assert!(recovery.recovered);
        assert_eq!(numbers(&recovery), vec![2, 3], "each missed event once, in offset order");
        assert_eq!(recovery.current.offset, 4);
        let nothing = history.recover(&[topic("channel:a")], &recovery.current, 10);
        assert!(nothing.recovered && nothing.events.is_empty());
    }

    #[test]
    fn a_trimmed_gap_another_epoch_or_too_many_events_is_not_recovered() {
        let history = MemoryHistory::new(HistoryConfig { size: 3, ..HistoryConfig::default() });
        let start = publish(&history, &["channel:a"], 0);
        for n in 1..=3 {
            publish(&history, &["channel:a"], n);
        }
        // Event 0 was trimmed, but a client that had it misses only what is still kept.
        assert_eq!(numbers(&history.recover(&[topic("channel:a")], &start, 10)), vec![1, 2, 3]);
        publish(&history, &["channel:a"], 4);
        assert!(!history.recover(&[topic("channel:a")], &start, 10).recovered, "event 1 was trimmed");
        let latest = Position::new(start.epoch.clone(), start.offset + 3);
        assert!(!history.recover(&[topic("channel:a")], &latest, 0).recovered, "over the limit");
        let other = Position::new(Arc::from("otherepoch"), 1);
        assert!(!history.recover(&[topic("channel:a")], &other, 10).recovered);
        let future = Position::new(start.epoch.clone(), 99);
        assert!(!history.recover(&[topic("channel:a")], &future, 10).recovered);
    }

    #[test]
    fn the_node_wide_event_cap_trims_the_oldest_events_first() {
        let history = MemoryHistory::new(HistoryConfig { max_events: 3, ..HistoryConfig::default() });
        let start = publish(&history, &["channel:a"], 1);
        publish(&history, &["channel:b"], 2);
        publish(&history, &["channel:b"], 3);
        assert!(history.recover(&[topic("channel:a")], &start, 10).recovered, "three events fit");
        let before = Position::new(start.epoch.clone(), 0);
        assert_eq!(numbers(&history.recover(&[topic("channel:a")], &before, 10)), vec![1]);
        publish(&history, &["channel:c"], 4);
        assert!(!history.recover(&[topic("channel:a")], &before, 10).recovered, "event 1 made room");
        assert_eq!(numbers(&history.recover(&[topic("channel:b"), topic("channel:c")], &start, 10)), vec![2, 3, 4]);
    }

    #[test]
    fn forgotten_topics_make_older_positions_unrecoverable() {
        let history = MemoryHistory::new(HistoryConfig { max_topics: 2, ..HistoryConfig::default() });
        let start = publish(&history, &["channel:a"], 1);
        publish(&history, &["channel:b"], 2);
        publish(&history, &["channel:c"], 3);
        // channel:a (offset 1) was forgotten to make room: a client at 0 may have missed it.
        let before = Position::new(start.epoch.clone(), 0);
        assert!(!history.recover(&[topic("channel:a")], &before, 10).recovered);
        assert!(history.recover(&[topic("channel:a")], &start, 10).recovered);
    }

    #[test]
    fn without_history_positions_are_given_and_gaps_reported() {
        let history = MemoryHistory::new(HistoryConfig { size: 0, ..HistoryConfig::default() });
        let first = publish(&history, &["channel:a"], 1);
        assert!(history.recover(&[topic("channel:a")], &first, 10).recovered);
        publish(&history, &["channel:a"], 2);
        assert!(!history.recover(&[topic("channel:a")], &first, 10).recovered);
    }

    #[tokio::test(start_paused = true)]
    async fn events_older_than_the_window_are_not_recovered() {
        let history =
            MemoryHistory::new(HistoryConfig { max_age: Duration::from_secs(10), ..HistoryConfig::default() });
        let start = publish(&history, &["channel:a"], 1);
        publish(&history, &["channel:a"], 2);
        assert!(history.recover(&[topic("channel:a")], &start, 10).recovered);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!history.recover(&[topic("channel:a")], &start, 10).recovered);
    }
}
