//! Latency samples and their percentiles.

use std::time::Duration;

/// Latencies of completed operations plus the bytes they moved.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    pub latencies: Vec<Duration>,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Samples {
    pub fn merge(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.bytes += other.bytes;
    }

    pub fn ops(&self) -> usize {
        self.latencies.len()
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.ops() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of latencies, nearest-rank.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut v = self.latencies.clone();
        v.sort();
        let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[idx]
    }
}

/// The median of some run times (the upper one of an even count); zero for none.
pub fn median(runs: &[Duration]) -> Duration {
    let mut v = runs.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_runs() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(median(&[ms(4), ms(1)]), ms(4));
        assert_eq!(median(&[]), Duration::ZERO);
    }

    #[test]
    fn nearest_rank_quantiles() {
        let s = Samples {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            bytes: 0,
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(s.quantile(0.5), Duration::from_millis(50));
        assert_eq!(s.quantile(0.99), Duration::from_millis(99));
        assert_eq!(s.quantile(1.0), Duration::from_millis(100));
        assert_eq!(s.ops_per_sec(), 100.0);
    }
}
