//! Connection admission: the node-wide connection cap and the per-IP connection rate.

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
}
