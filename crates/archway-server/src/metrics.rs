//! The coordinator's Prometheus metrics: queue depth by tag set, pickup latency, running
//! attempts, online runners by platform, requeues by reason.
//!
//! Every label value comes from a fixed set or is capped: tag sets beyond the
//! [`MAX_TAG_SETS`] largest queues are summed under `other`, platforms outside the known
//! architectures are `other`, reasons are an enum. A client cannot grow the label space.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::coordinator::Gauges;

/// Most distinct tag-set labels on the queue gauge.
pub const MAX_TAG_SETS: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequeueReason {
    /// A lease was lost (runner killed, machine reclaimed, network cut).
    RunnerSystemFailure,
    /// A draining runner gave the job back.
    HandedBack,
    /// The job's own `retry:`.
    Retry,
}

impl RequeueReason {
    fn as_str(self) -> &'static str {
        match self {
            RequeueReason::RunnerSystemFailure => "runner_system_failure",
            RequeueReason::HandedBack => "handed_back",
            RequeueReason::Retry => "retry",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TagsLabel {
    tags: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformLabel {
    platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    method: &'static str,
    route: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

type LatencyFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

fn api_latency_histogram() -> Histogram {
    // 100 µs … ~6.5 s (long polls land in the top buckets)
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    queued: Family<TagsLabel, Gauge>,
    running: Gauge,
    runners: Family<PlatformLabel, Gauge>,
    pickup: Histogram,
    requeues: Family<ReasonLabel, Counter<u64, AtomicU64>>,
    api_requests: Family<ApiLabels, Counter<u64, AtomicU64>>,
    api_latency: LatencyFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("archway");
        let queued = Family::<TagsLabel, Gauge>::default();
        let running = Gauge::default();
        let runners = Family::<PlatformLabel, Gauge>::default();
        // 0.5 ms … ~16 s
        let pickup = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let requeues = Family::<ReasonLabel, Counter<u64, AtomicU64>>::default();
        let api_requests = Family::<ApiLabels, Counter<u64, AtomicU64>>::default();
        let api_latency = LatencyFamily::new_with_constructor(api_latency_histogram);
        registry.register(
            "api_requests",
            "API requests, by method, route template and status class",
            api_requests.clone(),
        );
        registry.register(
            "api_request_seconds",
            "API request latency by route template (long polls included)",
            api_latency.clone(),
        );
        registry.register(
            "jobs_queued",
            "Pending jobs waiting for a runner, by required tag set",
            queued.clone(),
        );
        registry.register(
            "jobs_running",
            "Attempts running on runners",
            running.clone(),
        );
        registry.register(
            "runners_online",
            "Runners that renewed within a lease period, by platform offered",
            runners.clone(),
        );
        registry.register(
            "job_pickup_seconds",
            "Time from a job becoming pending to a runner receiving it",
            pickup.clone(),
        );
        registry.register(
            "job_requeues",
            "Jobs put back in the queue, by reason",
            requeues.clone(),
        );
        for r in [
            RequeueReason::RunnerSystemFailure,
            RequeueReason::HandedBack,
            RequeueReason::Retry,
        ] {
            requeues
                .get_or_create(&ReasonLabel {
                    reason: r.as_str().into(),
                })
                .get();
        }
        Metrics {
            registry,
            queued,
            running,
            runners,
            pickup,
            requeues,
            api_requests,
            api_latency,
        }
    }

    /// Counts one API request. `route` is a route template of the router (a fixed set),
    /// `method` one of `archway_http::labels`' fixed values.
    pub fn observe_api(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        seconds: f64,
    ) {
        let status = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.api_requests
            .get_or_create(&ApiLabels {
                method,
                route,
                status,
            })
            .inc();
        self.api_latency
            .get_or_create(&RouteLabel { route })
            .observe(seconds);
    }

    pub fn observe_pickup(&self, seconds: f64) {
        self.pickup.observe(seconds);
    }

    pub fn requeue(&self, reason: RequeueReason) {
        self.requeues
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().into(),
            })
            .inc();
    }

    /// Sets the gauges from fresh counts, with bounded labels.
    pub fn set_gauges(&self, g: &Gauges) {
        self.queued.clear();
        let mut other = 0;
        for (i, (tags, n)) in g.queued.iter().enumerate() {
            if i < MAX_TAG_SETS {
                let tags: Vec<String> = serde_json::from_str(tags).unwrap_or_default();
                let label: String = tags.join(",").chars().take(200).collect();
                self.queued
                    .get_or_create(&TagsLabel { tags: label })
                    .set(*n);
            } else {
                other += n;
            }
        }
        if other > 0 {
            self.queued
                .get_or_create(&TagsLabel {
                    tags: "other".into(),
                })
                .set(other);
        }
        self.running.set(g.running);
        self.runners.clear();
        for (p, n) in &g.runners {
            let known = [
                "linux/amd64",
                "linux/arm64",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/386",
                "linux/ppc64le",
                "linux/s390x",
                "linux/riscv64",
            ];
            let (base, emulated) = match p.strip_suffix(" (emulated)") {
                Some(b) => (b, true),
                None => (p.as_str(), false),
            };
            let label = if known.contains(&base) {
                p.clone()
            } else if emulated {
                "other (emulated)".into()
            } else {
                "other".into()
            };
            self.runners
                .get_or_create(&PlatformLabel { platform: label })
                .inc_by(*n);
        }
    }

    /// The text exposition format, without the final `# EOF` (the caller appends the
    /// registry's metrics and ends the document).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out.strip_suffix("# EOF\n")
            .map(str::to_owned)
            .unwrap_or(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_set_labels_are_capped_and_platforms_come_from_a_fixed_set() {
        let m = Metrics::new();
        let g = Gauges {
            queued: (0..100).map(|i| (format!("[\"t{i}\"]"), 1)).collect(),
            running: 3,
            runners: [
                ("linux/amd64".to_string(), 2),
                ("linux/made-up-arch".to_string(), 1),
            ]
            .into_iter()
            .collect(),
        };
        m.set_gauges(&g);
        let text = m.encode();
        let queued_lines = text
            .lines()
            .filter(|l| l.starts_with("archway_jobs_queued{"))
            .count();
        assert_eq!(queued_lines, MAX_TAG_SETS + 1, "{text}");
        assert!(
            text.contains("archway_jobs_queued{tags=\"other\"} 80"),
            "{text}"
        );
        assert!(
            text.contains("archway_runners_online{platform=\"other\"} 1"),
            "{text}"
        );
        assert!(text.contains("archway_jobs_running 3"), "{text}");
        assert!(!text.ends_with("# EOF\n"));
    }
}
