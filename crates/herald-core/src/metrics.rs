//! Every metric Herald records, in one place. Names follow Prometheus conventions;
//! `/metrics` serves them in the text format. Keep docs/metrics.md in step with this list.

use std::collections::HashSet;
use std::sync::OnceLock;

use parking_lot::Mutex;

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

/// How many distinct event names get a label of their own; the rest share `other`,
/// so a producer inventing names cannot blow up the metric cardinality.
const MAX_EVENT_LABELS: usize = 64;

/// The `event` label for `name`: the name itself for the first [`MAX_EVENT_LABELS`]
/// distinct names seen, `other` afterwards.
pub fn event_label(name: &str) -> String {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut seen = SEEN.get_or_init(Default::default).lock();
    if seen.contains(name) {
        return name.to_owned();
    }
    if seen.len() < MAX_EVENT_LABELS {
        seen.insert(name.to_owned());
        return name.to_owned();
    }
    "other".to_owned()
}

/// Counts one error answered to a client.
pub fn count_error(code: crate::ErrorCode) {
    metrics::counter!(ERRORS, "code" => code.as_str()).increment(1);
}
