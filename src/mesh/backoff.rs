//! Reconnect backoff: `reconnect_interval` with ±20 % jitter, so that servers restarted
//! together do not redial in lockstep.
//!
//! Pure: the jitter derives from a seed and the attempt number passed in, never from a clock
//! or a random source, so it is reproducible in tests.

use std::time::Duration;

/// The wait before redialling: `interval` ± 20 %, chosen by a hash of `seed` and `attempt`.
/// The same inputs give the same delay; different seeds spread links apart.
pub fn backoff_delay(interval: Duration, seed: u64, attempt: u64) -> Duration {
    let base = interval.as_nanos();
    let span = base / 5;
    if span == 0 {
        return interval;
    }
    let h = u128::from(splitmix64(seed ^ splitmix64(attempt)));
    let nanos = base - span + h % (2 * span + 1);
    // Only a Duration::MAX interval plus jitter exceeds u64 seconds; saturate it.
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder of a division by 10^9 fits in u32.
    Duration::new(secs, (nanos % 1_000_000_000) as u32)
}

/// SplitMix64 (Steele, Lea, Flood 2014): a fast, well-mixed 64-bit hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_jitter_stays_within_twenty_percent_and_depends_on_seed() {
        let interval = 5 * S;
        let (lo, hi) = (4 * S, 6 * S);
        let mut seen = std::collections::HashSet::new();
        for seed in 0..500u64 {
            for attempt in 0..4u64 {
                let d = backoff_delay(interval, seed, attempt);
                assert!(d >= lo && d <= hi, "{d:?}");
                assert_eq!(d, backoff_delay(interval, seed, attempt), "deterministic");
                seen.insert(d);
            }
        }
        assert!(seen.len() > 1900, "delays should spread, got {} distinct", seen.len());
        assert_ne!(backoff_delay(interval, 1, 1), backoff_delay(interval, 2, 1));
        assert_ne!(backoff_delay(interval, 1, 1), backoff_delay(interval, 1, 2));
        // Both halves of the range are used.
        let below = (0..200).filter(|&s| backoff_delay(interval, s, 0) < interval).count();
        assert!(below > 50 && below < 150, "{below}");
        // Tiny and huge intervals neither panic nor escape the bounds.
        assert_eq!(backoff_delay(Duration::from_nanos(4), 3, 3), Duration::from_nanos(4));
        let big = backoff_delay(Duration::MAX, 3, 3);
        assert!(big >= Duration::MAX / 5 * 4);
    }
}
