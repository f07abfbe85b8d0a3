//! Delivery counting and latency histograms, one shard per load-generator thread so that
//! thousands of connection tasks record without contending on a lock or a cache line.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use parking_lot::Mutex;

const SHARDS: usize = 16;

/// Nanoseconds since the process started; the timestamp publishers embed and receivers
/// subtract from (both in this process, so the clocks agree).
pub fn now_nanos() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The shard this thread records into: threads take shards in turn, so each runtime
/// worker has one to itself (a shard per connection, shared by both workers, made the
/// recording 5% of the load generator's CPU in the chat scenario, measured with perf).
fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    }
    SHARD.with(|shard| match shard.get() {
        Some(taken) => taken,
        None => {
            let taken = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            shard.set(Some(taken));
            taken
        }
    })
}

/// A shard's histogram on cache lines of its own.
#[repr(align(128))]
struct Shard(Mutex<Histogram<u64>>);

pub struct Recorder {
    shards: Vec<Shard>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

impl Default for Recorder {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| Shard(Mutex::new(histogram()))).collect() }
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
    pub fn record(&self, sent_nanos: u64) {
        let micros = now_nanos().saturating_sub(sent_nanos) / 1000;
        self.shards[thread_shard()].0.lock().saturating_record(micros.max(1));
    }

    /// Deliveries recorded since the start or the last [`Recorder::reset`].
    pub fn delivered(&self) -> u64 {
        self.shards.iter().map(|shard| shard.0.lock().len()).sum()
    }

    pub fn latency(&self) -> Latency {
        let mut merged = histogram();
        for shard in &self.shards {
            if merged.add(&*shard.0.lock()).is_err() {
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
        for shard in &self.shards {
            shard.0.lock().reset();
        }
    }
}

/// A key searched for in every frame, with its searcher built once (memchr's SIMD
/// `memmem`: `str::find` building a two-way searcher per call was 2.7% of the load
/// generator's CPU in the chat scenario, measured with perf).
pub struct Key {
    key: &'static str,
    finder: OnceLock<Finder<'static>>,
}

impl Key {
    pub const fn new(key: &'static str) -> Self {
        Self { key, finder: OnceLock::new() }
    }

    /// The digits that follow the key's first occurrence in `frame`, as a number.
    pub fn number_after(&self, frame: &str) -> Option<u64> {
        let finder = self.finder.get_or_init(|| Finder::new(self.key));
        let start = finder.find(frame.as_bytes())? + self.key.len();
        let digits = &frame.as_bytes()[start..];
        let end = digits.iter().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
        frame[start..start + end].parse().ok()
    }
}

/// Finds `"t":<digits>` in a frame without parsing the whole JSON.
pub fn stamp_of(frame: &str) -> Option<u64> {
    static STAMP: Key = Key::new("\"t\":");
    STAMP.number_after(frame)
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
