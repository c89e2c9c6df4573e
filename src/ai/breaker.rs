//! Circuit breaker around the provider: after `threshold` consecutive failures it opens and
//! answers at once for `cooldown`, then lets exactly one probe through (half-open); the probe's
//! success closes it, its failure opens it again. Time is passed in, so tests need no sleeping.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }

    /// The value of `hakikisha_ai_circuit_state`.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

/// Whether a call may go upstream.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Closed again only after this probe reports.
    Probe,
    /// Refused; retry after about this long.
    Refused(Duration),
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the state itself is always valid.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self, now: Instant) -> CircuitState {
        match *self.lock() {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { until } if now >= until => CircuitState::HalfOpen,
            Inner::Open { .. } => CircuitState::Open,
            Inner::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    pub fn admit(&self, now: Instant) -> Admission {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => Admission::Allowed,
            Inner::Open { until } if now < until => Admission::Refused(until - now),
            Inner::Open { .. } | Inner::HalfOpen { probing: false } => {
                *inner = Inner::HalfOpen { probing: true };
                Admission::Probe
            }
            // One probe at a time; the others wait about one call's worth.
            Inner::HalfOpen { probing: true } => Admission::Refused(Duration::from_secs(1)),
        }
    }

    pub fn success(&self) {
        *self.lock() = Inner::Closed { failures: 0 };
    }

    /// Records a failed call; returns true when this failure opened the circuit.
    pub fn failure(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { failures } if failures + 1 < self.threshold => {
                *inner = Inner::Closed {
                    failures: failures + 1,
                };
                false
            }
            Inner::Open { .. } => false,
            _ => {
                *inner = Inner::Open {
                    until: now + self.cooldown,
                };
                true
            }
        }
    }

    /// A probe that ended without a verdict on the provider (e.g. our own queue refused it):
    /// let the next caller probe instead.
    pub fn abandon_probe(&self) {
        let mut inner = self.lock();
        if let Inner::HalfOpen { probing: true } = *inner {
            *inner = Inner::HalfOpen { probing: false };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_half_opens_after_the_cooldown() {
        let b = Breaker::new(3, Duration::from_secs(30));
        let t0 = Instant::now();
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert_eq!(b.admit(t0), Admission::Allowed);
        assert!(b.failure(t0), "third consecutive failure opens");
        assert_eq!(b.state(t0), CircuitState::Open);
        assert!(
            matches!(b.admit(t0 + Duration::from_secs(10)), Admission::Refused(d) if d == Duration::from_secs(20))
        );
        let later = t0 + Duration::from_secs(31);
        assert_eq!(b.state(later), CircuitState::HalfOpen);
        assert_eq!(b.admit(later), Admission::Probe);
        assert!(
            matches!(b.admit(later), Admission::Refused(_)),
            "one probe at a time"
        );
        b.success();
        assert_eq!(b.state(later), CircuitState::Closed);
        assert_eq!(b.admit(later), Admission::Allowed);
    }

    #[test]
    fn a_success_resets_the_count_and_a_failed_probe_reopens() {
        let b = Breaker::new(2, Duration::from_secs(5));
        let t0 = Instant::now();
        b.failure(t0);
        b.success();
        assert!(!b.failure(t0), "count restarted after a success");
        assert!(b.failure(t0));
        let t1 = t0 + Duration::from_secs(6);
        assert_eq!(b.admit(t1), Admission::Probe);
        assert!(b.failure(t1));
        assert_eq!(b.state(t1), CircuitState::Open);
        b.abandon_probe();
        assert_eq!(b.state(t1 + Duration::from_secs(6)), CircuitState::HalfOpen);
        assert_eq!(b.admit(t1 + Duration::from_secs(6)), Admission::Probe);
        b.abandon_probe();
        assert_eq!(
            b.admit(t1 + Duration::from_secs(6)),
            Admission::Probe,
            "an abandoned probe frees the slot"
        );
    }
}
