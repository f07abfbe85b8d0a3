//! Delivery counting and latency histograms, sharded so thousands of connection tasks can
//! record without contending on one lock.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

const SHARDS: usize = 16;

/// Nanoseconds since the process started; the timestamp publishers embed and receivers
/// subtract from (both in this process, so the clocks agree).
pub fn now_nanos() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub struct Recorder {
    delivered: AtomicU64,
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")))
            .collect();
        Self { delivered: AtomicU64::new(0), shards }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Recorder {
    /// Records one delivery whose publisher stamped it at `sent_nanos`.
    pub fn record(&self, shard: usize, sent_nanos: u64) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let micros = now_nanos().saturating_sub(sent_nanos) / 1000;
        self.shards[shard % SHARDS].lock().saturating_record(micros.max(1));
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn latency(&self) -> Latency {
        let mut merged = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds");
        for shard in &self.shards {
            if merged.add(&*shard.lock()).is_err() {
                eprintln!("histogram merge failed");
            }
        }
        Latency {
            p50_us: merged.value_at_quantile(0.5),
            p99_us: merged.value_at_quantile(0.99),
            p999_us: merged.value_at_quantile(0.999),
            max_us: merged.max(),
        }
    }

    /// Clears latencies and counts (between warm-up and measurement).
    pub fn reset(&self) {
        self.delivered.store(0, Ordering::Relaxed);
        for shard in &self.shards {
            shard.lock().reset();
        }
    }
}

/// Finds `"t":<digits>` in a frame without parsing the whole JSON.
pub fn stamp_of(frame: &str) -> Option<u64> {
    let start = frame.find("\"t\":")? + 4;
    let digits: &str = &frame[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::stamp_of;

    #[test]
    fn finds_the_stamp() {
        assert_eq!(stamp_of(r#"{"type":"notification","payload":{"t":12345,"seq":1}}"#), Some(12345));
        assert_eq!(stamp_of(r#"42["notification",{"seq":1,"t":7}]"#), Some(7));
        assert_eq!(stamp_of(r#"{"type":"connected"}"#), None);
    }
}
