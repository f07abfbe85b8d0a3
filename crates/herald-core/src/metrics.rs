//! Every metric Herald records, in one place. Names follow Prometheus conventions;
//! `/metrics` serves them in the text format. Keep docs/metrics.md in step with this list.

use std::collections::HashSet;
use std::sync::OnceLock;

use parking_lot::RwLock;

/// Gauge, label `transport`: sessions open now.
pub const CONNECTIONS_ACTIVE: &str = "herald_connections_active";
/// Counter, label `transport`: sessions ever opened.
pub const CONNECTIONS_TOTAL: &str = "herald_connections_total";
/// Gauge, label `transport`: the most sessions open at once since start.
pub const CONNECTIONS_PEAK: &str = "herald_connections_peak";
/// Counter, label `reason`: connection attempts refused before a session existed
/// (bad token, limits).
pub const CONNECTIONS_REFUSED: &str = "herald_connections_refused_total";
/// Counter, label `event`: events received from clients and producers.
pub const EVENTS_IN: &str = "herald_events_in_total";
/// Counter, label `event`: events handed to sessions (one per recipient).
pub const EVENTS_OUT: &str = "herald_events_out_total";
/// Counter, label `event`: client events refused by their rate limit.
pub const EVENTS_RATE_LIMITED: &str = "herald_events_rate_limited_total";
/// Counter, label `event`: conversation events (messages, receipts, reactions, typing)
/// Herald published.
pub const CHAT_EVENTS: &str = "herald_chat_events_total";
/// Counter: typing indicators Herald ended because the client did not renew them.
pub const TYPING_EXPIRED: &str = "herald_typing_expired_total";
/// Counter, label `code`: errors answered to clients.
pub const ERRORS: &str = "herald_errors_total";
/// Histogram, seconds: from an event entering the node to its last local enqueue.
pub const PUBLISH_TO_ENQUEUE_SECONDS: &str = "herald_publish_to_enqueue_seconds";
/// Counter, label `transport`: sessions closed because their queue was full.
pub const SLOW_CONSUMER_DISCONNECTS: &str = "herald_slow_consumer_disconnects_total";
/// Counter, label `reason`: sessions closed by the server.
pub const SESSIONS_CLOSED: &str = "herald_sessions_closed_total";
/// Counter: publishes accepted by the HTTP API.
pub const PUBLISHES: &str = "herald_publishes_total";
/// Gauge: distinct users connected (updated when `/metrics` is scraped).
pub const UNIQUE_USERS: &str = "herald_unique_users";
/// Gauge: topics with at least one local subscriber (updated when `/metrics` is scraped).
pub const TOPICS_ACTIVE: &str = "herald_topics_active";
/// Histogram: seconds a conversation message took to be stored (waiting for the store's
/// poster, the write and its commit), before it is published.
pub const CHAT_STORE_SECONDS: &str = "herald_chat_store_seconds";
/// Counter: notifications the inbox stored (duplicates by dedupe key not counted).
pub const INBOX_CREATED: &str = "herald_inbox_notifications_created_total";
/// Histogram: seconds one inbox write transaction (a batch of creations) took.
pub const INBOX_WRITE_SECONDS: &str = "herald_inbox_write_seconds";
/// Histogram: seconds the inbox writer spent pushing one committed batch (reading the
/// unread counts, publishing the events).
pub const INBOX_PUSH_SECONDS: &str = "herald_inbox_push_seconds";
/// Counter: retention runs that deleted notifications.
pub const INBOX_PRUNE_RUNS: &str = "herald_inbox_prune_runs_total";

/// Counter, label `recovered` (`true`/`false`): returning clients that asked for what
/// they missed.
pub const RECOVERIES: &str = "herald_recoveries_total";

/// Gauge: 1 while the Redis broker is connected (subscriber and commands), else 0.
pub const BROKER_CONNECTED: &str = "herald_broker_connected";
/// Counter: times the Redis broker became unavailable.
pub const BROKER_OUTAGES: &str = "herald_broker_outages_total";
/// Counter: messages received on Herald's Redis channels.
pub const BROKER_MESSAGES_IN: &str = "herald_broker_messages_in_total";
/// Counter, label `result` (`ok`, `malformed`, `dropped`): messages from seed
/// 000/004's Redis channels.
pub const SEED_MESSAGES: &str = "herald_seed_channel_messages_total";
/// Counter, label `result` (`processed`, `retried`, `dead`): outbox events handled.
pub const OUTBOX_EVENTS: &str = "herald_outbox_events_total";
/// Histogram: seconds from an outbox event's creation to its delivery.
pub const OUTBOX_DELIVERY_SECONDS: &str = "herald_outbox_delivery_seconds";
/// Gauge: outbox events neither processed nor dead.
pub const OUTBOX_PENDING: &str = "herald_outbox_pending";
/// Gauge: dead outbox events, waiting to be retried by hand.
pub const OUTBOX_DEAD: &str = "herald_outbox_dead";
/// Gauge: age in seconds of the oldest pending outbox event (0 when none).
pub const OUTBOX_LAG_SECONDS: &str = "herald_outbox_lag_seconds";
/// Gauge: live nodes in the cluster registry.
pub const CLUSTER_NODES: &str = "herald_cluster_nodes";
/// Gauge: connections across all live nodes.
pub const CLUSTER_CONNECTIONS: &str = "herald_cluster_connections";

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric: its name, kind and help text (`# HELP` on `/metrics`). docs/metrics.md
/// lists the same names; a test keeps the two in step.
pub const ALL: &[(&str, Kind, &str)] = &[
    (CONNECTIONS_ACTIVE, Kind::Gauge, "Sessions open now, by transport."),
    (CONNECTIONS_TOTAL, Kind::Counter, "Sessions ever opened, by transport."),
    (CONNECTIONS_PEAK, Kind::Gauge, "The most sessions open at once since start, by transport."),
    (CONNECTIONS_REFUSED, Kind::Counter, "Connections refused before a session existed, by reason."),
    (EVENTS_IN, Kind::Counter, "Events received from clients and producers, by event name."),
    (EVENTS_OUT, Kind::Counter, "Events handed to sessions, one per recipient, by event name."),
    (EVENTS_RATE_LIMITED, Kind::Counter, "Client events dropped by their rate limit, by event name."),
    (CHAT_EVENTS, Kind::Counter, "Conversation events published (messages, receipts, reactions, typing, attendance)."),
    (TYPING_EXPIRED, Kind::Counter, "Typing indicators Herald ended because they were not renewed."),
    (ERRORS, Kind::Counter, "Errors answered to clients, by error code."),
    (PUBLISH_TO_ENQUEUE_SECONDS, Kind::Histogram, "Seconds from an event entering the node to its last local enqueue."),
    (SLOW_CONSUMER_DISCONNECTS, Kind::Counter, "Sessions closed because their queue was full, by transport."),
    (SESSIONS_CLOSED, Kind::Counter, "Sessions closed by the server, by reason."),
    (PUBLISHES, Kind::Counter, "Publishes accepted by the HTTP API."),
    (UNIQUE_USERS, Kind::Gauge, "Distinct users connected to this node."),
    (TOPICS_ACTIVE, Kind::Gauge, "Topics with at least one local subscriber."),
    (
        CHAT_STORE_SECONDS,
        Kind::Histogram,
        "Seconds a conversation message took to be stored (queue, write, commit) before it was published.",
    ),
    (INBOX_CREATED, Kind::Counter, "Notifications the inbox stored (dedupe-key repeats not counted)."),
    (INBOX_WRITE_SECONDS, Kind::Histogram, "Seconds one inbox write transaction (a batch of creations) took."),
    (
        INBOX_PUSH_SECONDS,
        Kind::Histogram,
        "Seconds pushing one committed inbox batch took (unread counts, publishing).",
    ),
    (INBOX_PRUNE_RUNS, Kind::Counter, "Inbox retention runs that deleted notifications."),
    (RECOVERIES, Kind::Counter, "Returning clients that named a position, by whether it was recovered."),
    (BROKER_CONNECTED, Kind::Gauge, "1 while the Redis broker's subscriber and commands work, else 0."),
    (BROKER_OUTAGES, Kind::Counter, "Times the Redis broker became unavailable."),
    (BROKER_MESSAGES_IN, Kind::Counter, "Messages received on Herald's Redis channels."),
    (SEED_MESSAGES, Kind::Counter, "Messages from seed 000/004's notifications:* Redis channels, by result."),
    (OUTBOX_EVENTS, Kind::Counter, "Outbox events handled, by result."),
    (OUTBOX_DELIVERY_SECONDS, Kind::Histogram, "Seconds from an outbox event's creation to its delivery."),
    (OUTBOX_PENDING, Kind::Gauge, "Outbox events neither processed nor dead."),
    (OUTBOX_DEAD, Kind::Gauge, "Dead outbox events, waiting to be retried by hand."),
    (OUTBOX_LAG_SECONDS, Kind::Gauge, "Age in seconds of the oldest pending outbox event (0 when none)."),
    (CLUSTER_NODES, Kind::Gauge, "Live nodes in the cluster registry."),
    (CLUSTER_CONNECTIONS, Kind::Gauge, "Connections across all live nodes."),
];

/// Gives the installed recorder every metric's help text.
pub fn describe_all() {
    for &(name, kind, help) in ALL {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// How many distinct event names get a label of their own; the rest share `other`,
/// so a producer inventing names cannot blow up the metric cardinality.
const MAX_EVENT_LABELS: usize = 64;

/// The `event` label for `name`: the name itself for the first [`MAX_EVENT_LABELS`]
/// distinct names seen, `other` afterwards. Labels are interned (at most
/// [`MAX_EVENT_LABELS`] small strings live for the whole process), so recording a metric
/// on the hot path neither allocates nor takes a write lock.
pub fn event_label(name: &str) -> &'static str {
    static SEEN: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(label) = seen.read().get(name) {
        return label;
    }
    let mut seen = seen.write();
    if let Some(label) = seen.get(name) {
        return label;
    }
    if seen.len() >= MAX_EVENT_LABELS {
        return "other";
    }
    let label: &'static str = Box::leak(name.to_owned().into_boxed_str());
    seen.insert(label);
    label
}

/// How many of the latest errors [`recent_errors`] keeps.
const RECENT_ERRORS: usize = 50;

fn recent() -> &'static parking_lot::Mutex<std::collections::VecDeque<(u64, &'static str)>> {
    static RECENT: OnceLock<parking_lot::Mutex<std::collections::VecDeque<(u64, &'static str)>>> = OnceLock::new();
    RECENT.get_or_init(Default::default)
}

/// Counts one error answered to a client, and keeps it among the recent ones.
pub fn count_error(code: crate::ErrorCode) {
    metrics::counter!(ERRORS, "code" => code.as_str()).increment(1);
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut recent = recent().lock();
    if recent.len() == RECENT_ERRORS {
        recent.pop_front();
    }
    recent.push_back((at, code.as_str()));
}

/// The latest errors answered to clients in this process (at most 50): Unix
/// milliseconds and the error code, oldest first.
pub fn recent_errors() -> Vec<(u64, &'static str)> {
    recent().lock().iter().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::ALL;

    #[test]
    fn docs_metrics_md_lists_every_metric_and_only_those() {
        let docs = include_str!("../../../docs/metrics.md");
        let documented: Vec<&str> = docs
            .lines()
            .filter_map(|line| line.strip_prefix("| `")?.split('`').next())
            .filter(|name| name.starts_with("herald_"))
            .collect();
        let names: Vec<&str> = ALL.iter().map(|(name, _, _)| *name).collect();
        for name in &names {
            assert!(documented.contains(name), "docs/metrics.md lacks {name}");
        }
        for name in &documented {
            assert!(names.contains(name), "docs/metrics.md lists {name}, which Herald does not record");
        }
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a metric listed twice");
    }
}
