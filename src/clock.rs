//! Time, injectable. Everything that compares against "now" (token expiry today; presence,
//! offers and scheduled orders later) asks a [`Clock`], so tests move time forward instead of
//! sleeping.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, DurationRound, Utc};

/// `secs` seconds from configuration as a chrono duration (saturating instead of overflowing).
pub fn seconds(secs: u64) -> Duration {
    Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
}

/// Wall-clock time, either the system's or a manual one that tests advance.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<Mutex<DateTime<Utc>>>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that stands still at `start` until [`Clock::advance`] moves it.
    pub fn manual(start: DateTime<Utc>) -> Self {
        Self { manual: Some(Arc::new(Mutex::new(truncate(start)))) }
    }

    /// Now, truncated to microseconds: the precision both stores keep, so a time read back
    /// equals the time written.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            Some(now) => *now.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            None => truncate(Utc::now()),
        }
    }

    /// Moves a manual clock forward. Does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(now) = &self.manual {
            let mut now = now.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            *now += by;
        }
    }
}

fn truncate(time: DateTime<Utc>) -> DateTime<Utc> {
    time.duration_trunc(Duration::microseconds(1)).unwrap_or(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = Utc::now();
        let clock = Clock::manual(start);
        assert_eq!(clock.now(), clock.now());
        clock.advance(Duration::seconds(90));
        assert_eq!(clock.now() - truncate(start), Duration::seconds(90));
    }
}
