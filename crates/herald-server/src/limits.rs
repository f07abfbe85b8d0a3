//! Connection admission (the node-wide connection cap and the per-IP connection rate),
//! and the per-connection rate limits of client events.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use herald_core::ErrorCode;
use herald_core::metrics as m;

/// Decides whether a new connection may open.
pub struct Admission {
    max_connections: usize,
    open: Arc<AtomicUsize>,
    /// `None` when the per-IP limit is off.
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").field("max_connections", &self.max_connections).field("open", &self.open).finish()
    }
}

/// Held for the life of a connection; releases its place when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    open: Arc<AtomicUsize>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A refused connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub ErrorCode);

impl Admission {
    /// `max_per_window` connections per IP per `window`; 0 turns the per-IP limit off.
    pub fn new(max_connections: usize, max_per_window: u32, window: Duration) -> Self {
        let per_ip = NonZeroU32::new(max_per_window).map(|burst| {
            let period = window / burst.get();
            let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
                .unwrap_or_else(|| Quota::per_second(burst))
                .allow_burst(burst);
            RateLimiter::keyed(quota)
        });
        Self { max_connections, open: Arc::new(AtomicUsize::new(0)), per_ip }
    }

    /// Admits a connection from `ip`, or says why not.
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<ConnectionPermit, Refused> {
        if let (Some(limiter), Some(ip)) = (&self.per_ip, ip)
            && limiter.check_key(&ip).is_err()
        {
            metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "rate_limited").increment(1);
            return Err(Refused(ErrorCode::RateLimited));
        }
        let previous = self.open.fetch_add(1, Ordering::Relaxed);
        if previous >= self.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "max_connections").increment(1);
            return Err(Refused(ErrorCode::TooManyConnections));
        }
        Ok(ConnectionPermit { open: self.open.clone() })
    }

    /// Forgets IPs that have not connected for a full window (bounded memory).
    pub fn retain_recent(&self) {
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One event class's limit: at most `count` events per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

/// The client events that are rate limited, with seed 003's defaults. Typing start and
/// stop share one limit, as do adding and removing reactions.
pub const LIMITED_EVENTS: &[(&str, &[&str], Rate)] = &[
    ("message:new", &["message:new"], Rate { count: 30, per: Duration::from_secs(60) }),
    ("message:typing", &["message:typing", "message:stop-typing"], Rate { count: 10, per: Duration::from_secs(10) }),
    ("message:delivered", &["message:delivered"], Rate { count: 100, per: Duration::from_secs(60) }),
    ("message:read", &["message:read"], Rate { count: 100, per: Duration::from_secs(60) }),
    ("presence:update", &["presence:update"], Rate { count: 20, per: Duration::from_secs(60) }),
    ("call:initiate", &["call:initiate"], Rate { count: 5, per: Duration::from_secs(60) }),
    ("reaction:new", &["reaction:new", "reaction:remove"], Rate { count: 50, per: Duration::from_secs(60) }),
];

/// The configured limit of each class in [`LIMITED_EVENTS`] (`None`: unlimited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLimits {
    rates: Vec<Option<Rate>>,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self { rates: LIMITED_EVENTS.iter().map(|(_, _, rate)| Some(*rate)).collect() }
    }
}

impl EventLimits {
    /// Seed 003's defaults overridden by `spec`: `event=count/duration` items separated by
    /// commas (`message:new=60/1m,message:typing=off`); `off` or a count of 0 lifts a limit.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut limits = Self::default();
        for item in spec.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let (event, rate) =
                item.split_once('=').ok_or_else(|| format!("{item:?}: expected event=count/duration"))?;
            let index = LIMITED_EVENTS
                .iter()
                .position(|(name, _, _)| *name == event.trim())
                .ok_or_else(|| format!("{event:?} is not a rate-limited event"))?;
            let rate = rate.trim();
            limits.rates[index] = if rate == "off" {
                None
            } else {
                let (count, per) = rate.split_once('/').ok_or_else(|| format!("{item:?}: expected count/duration"))?;
                let count: u32 = count.trim().parse().map_err(|_| format!("{item:?}: count must be a number"))?;
                let per = humantime::parse_duration(per.trim()).map_err(|error| format!("{item:?}: {error}"))?;
                if per.is_zero() {
                    return Err(format!("{item:?}: duration must be positive"));
                }
                (count > 0).then_some(Rate { count, per })
            };
        }
        Ok(limits)
    }

    /// The limit of `event`'s class, if any.
    pub fn of(&self, event: &str) -> Option<(usize, Rate)> {
        let index = LIMITED_EVENTS.iter().position(|(_, events, _)| events.contains(&event))?;
        self.rates[index].map(|rate| (index, rate))
    }
}

/// The clock every limiter reads: creating one calibrates it (`CPUID` and a timing loop),
/// too costly to do per connection; clones share the calibration.
fn clock() -> &'static governor::clock::DefaultClock {
    static CLOCK: std::sync::OnceLock<governor::clock::DefaultClock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(Default::default)
}

/// One connection's limiters, created on the first limited event so that idle
/// connections carry one empty pointer.
#[derive(Default)]
pub struct EventLimiter {
    limiters: Option<Box<[Option<governor::DefaultDirectRateLimiter>]>>,
}

impl std::fmt::Debug for EventLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLimiter").field("active", &self.limiters.is_some()).finish()
    }
}

impl EventLimiter {
    /// Admits one `event`, or says how long until it would be admitted.
    pub fn check(&mut self, limits: &EventLimits, event: &str) -> Result<(), Duration> {
        let Some((index, rate)) = limits.of(event) else { return Ok(()) };
        let limiters = self.limiters.get_or_insert_with(|| (0..LIMITED_EVENTS.len()).map(|_| None).collect());
        let limiter = limiters[index].get_or_insert_with(|| {
            let burst = NonZeroU32::new(rate.count).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(rate.per / burst.get())
                .unwrap_or_else(|| Quota::per_second(burst))
                .allow_burst(burst);
            RateLimiter::direct_with_clock(quota, clock().clone())
        });
        limiter.check().map_err(|not_until| {
            metrics::counter!(m::EVENTS_RATE_LIMITED, "event" => m::event_label(event)).increment(1);
            not_until.wait_time_from(governor::clock::Clock::now(clock()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_open_connections_and_frees_places_on_drop() {
        let admission = Admission::new(2, 0, Duration::from_secs(60));
        let first = admission.admit(None).unwrap();
        let _second = admission.admit(None).unwrap();
        assert_eq!(admission.admit(None).unwrap_err(), Refused(ErrorCode::TooManyConnections));
        drop(first);
        assert!(admission.admit(None).is_ok());
    }

    #[test]
    fn limits_connections_per_ip_per_window() {
        let admission = Admission::new(100, 3, Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let _held: Vec<_> = (0..3).map(|_| admission.admit(Some(ip)).unwrap()).collect();
        assert_eq!(admission.admit(Some(ip)).unwrap_err(), Refused(ErrorCode::RateLimited));
        assert!(admission.admit(Some(other)).is_ok(), "other IPs are unaffected");
    }

    #[test]
    fn event_limits_have_seed_defaults_and_parse_overrides() {
        let defaults = EventLimits::default();
        assert_eq!(defaults.of("message:new").map(|(_, rate)| rate.count), Some(30));
        assert_eq!(defaults.of("message:stop-typing").map(|(_, rate)| rate.count), Some(10), "typing shares one class");
        assert_eq!(defaults.of("chat:join"), None);
        let custom = EventLimits::parse("message:new=2/1s, call:initiate=off").unwrap();
        assert_eq!(
            custom.of("message:new").map(|(_, rate)| rate),
            Some(Rate { count: 2, per: Duration::from_secs(1) })
        );
        assert_eq!(custom.of("call:initiate"), None);
        assert_eq!(custom.of("message:read").map(|(_, rate)| rate.count), Some(100));
        for bad in ["message:new", "nope=1/1s", "message:new=x/1s", "message:new=1/soon", "message:new=1/0s"] {
            assert!(EventLimits::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_connection_gets_its_burst_then_a_retry_time() {
        let limits = EventLimits::parse("message:new=3/1m").unwrap();
        let mut limiter = EventLimiter::default();
        for _ in 0..3 {
            assert!(limiter.check(&limits, "message:new").is_ok());
        }
        let retry = limiter.check(&limits, "message:new").unwrap_err();
        assert!(retry > Duration::from_secs(15) && retry <= Duration::from_secs(20), "{retry:?}");
        assert!(limiter.check(&limits, "reaction:new").is_ok(), "classes are separate");
        assert!(limiter.check(&limits, "chat:join").is_ok(), "unlisted events are not limited");
        let mut other = EventLimiter::default();
        assert!(other.check(&limits, "message:new").is_ok(), "connections are separate");
    }
}
