//! Token buckets for the per-sandbox limits: new connections per minute
//! (over the limit a connection is refused) and bytes per second in each
//! direction (over the limit the copy waits; nothing is dropped).
//!
//! Time is passed in, so the arithmetic is tested without sleeping.

use std::time::{Duration, Instant};

/// A bucket that holds up to `capacity` tokens and gains `rate` per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Starts full, so a fresh sandbox gets its whole burst.
    pub fn new(capacity: f64, rate_per_second: f64, now: Instant) -> Self {
        TokenBucket {
            capacity,
            rate: rate_per_second,
            tokens: capacity,
            last: now,
        }
    }

    /// New connections: a burst of a whole minute's allowance, refilled
    /// evenly over the minute.
    pub fn per_minute(count: u32, now: Instant) -> Self {
        TokenBucket::new(f64::from(count), f64::from(count) / 60.0, now)
    }

    /// Bytes per second: a burst of a quarter second (at least 16 KiB, so
    /// a slow limit still moves whole segments).
    pub fn bytes_per_second(rate: u64, now: Instant) -> Self {
        let rate = rate as f64;
        TokenBucket::new((rate / 4.0).max(16384.0), rate, now)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Takes one token if there is one.
    pub fn try_take_one(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes up to `want` tokens. Returns how many were granted and, when
    /// none were, how long until one whole token is there.
    pub fn take_up_to(&mut self, want: usize, now: Instant) -> (usize, Duration) {
        self.refill(now);
        let granted = self.tokens.floor().min(want as f64).max(0.0);
        if granted >= 1.0 {
            self.tokens -= granted;
            return (granted as usize, Duration::ZERO);
        }
        let missing = 1.0 - self.tokens;
        let wait = if self.rate > 0.0 {
            missing / self.rate
        } else {
            1.0
        };
        // At least a millisecond, so a caller does not spin on rounding.
        (0, Duration::from_secs_f64(wait.clamp(0.001, 1.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_bucket_allows_the_burst_then_refills_evenly() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(6, t0);
        assert_eq!((0..10).filter(|_| b.try_take_one(t0)).count(), 6);
        // One token every ten seconds.
        assert!(!b.try_take_one(t0 + Duration::from_secs(9)));
        assert!(b.try_take_one(t0 + Duration::from_secs(10)));
        assert!(!b.try_take_one(t0 + Duration::from_secs(10)));
        // Never more than the capacity, however long it rests.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.try_take_one(later)).count(), 6);
    }

    #[test]
    fn byte_bucket_grants_partially_and_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = TokenBucket::bytes_per_second(100_000, t0);
        assert_eq!(b.take_up_to(10_000, t0), (10_000, Duration::ZERO));
        // The burst is 25,000 bytes: 15,000 are left.
        assert_eq!(b.take_up_to(100_000, t0).0, 15_000);
        let (granted, wait) = b.take_up_to(1, t0);
        assert_eq!(granted, 0);
        assert!(wait <= Duration::from_millis(1), "{wait:?}");
        // 50 ms later, 5,000 bytes have come in.
        assert_eq!(
            b.take_up_to(100_000, t0 + Duration::from_millis(50)).0,
            5_000
        );
    }

    #[test]
    fn byte_bucket_rate_holds_over_a_simulated_second() {
        let t0 = Instant::now();
        let mut b = TokenBucket::bytes_per_second(64 * 1024, t0);
        let mut now = t0;
        let mut sent = 0;
        while now < t0 + Duration::from_secs(2) {
            let (g, wait) = b.take_up_to(1500, now);
            sent += g;
            now += wait.max(Duration::from_micros(100));
        }
        // Two seconds at 64 KiB/s plus the 16 KiB burst.
        let expect = 2 * 64 * 1024 + 16 * 1024;
        assert!(sent <= expect + 1500 && sent >= expect - 3000, "{sent}");
    }
}
