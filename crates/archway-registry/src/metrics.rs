//! Prometheus metrics (`GET /metrics`) and the byte-counting body wrapper behind them.
//!
//! * `archway_registry_http_requests_total{method,route,status}`
//! * `archway_registry_http_request_duration_seconds{method,route}`: time to response headers
//! * `archway_registry_http_request_bytes_total{method}` / `…_response_bytes_total{route}`:
//!   body bytes actually transferred
//! * `archway_registry_uploads_in_progress`: open upload sessions, read from storage at scrape
//! * `archway_registry_password_checks_total`: bcrypt comparisons run (with `--htpasswd`)
//!
//! Every label value comes from a fixed set ([`archway_http::labels`]): the method is one of
//! eight values, the route one of the registry's endpoint names, the status a code the
//! server itself chose. No client can add a series.

use std::pin::Pin;
use std::task::{Context, Poll};

use archway_http::labels::method_label;
use bytes::Bytes;
use http::Method;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as PromRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    method: &'static str,
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

type HistogramFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs … ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// The registry's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: PromRegistry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    request_bytes: Family<MethodLabel, Counter>,
    response_bytes: Family<RouteLabel, Counter>,
    uploads_in_progress: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Metrics {
    /// `password_checks`: the authentication's bcrypt counter, when there is one.
    pub fn new(password_checks: Option<Counter>) -> Self {
        let mut registry = PromRegistry::with_prefix("archway_registry");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = HistogramFamily::new_with_constructor(latency_histogram);
        let request_bytes = Family::<MethodLabel, Counter>::default();
        let response_bytes = Family::<RouteLabel, Counter>::default();
        let uploads_in_progress = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests served, by method, endpoint and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response headers",
            latency.clone(),
        );
        registry.register(
            "http_request_bytes",
            "Request body bytes received",
            request_bytes.clone(),
        );
        registry.register(
            "http_response_bytes",
            "Response body bytes sent",
            response_bytes.clone(),
        );
        registry.register(
            "uploads_in_progress",
            "Blob upload sessions started and not yet completed or cancelled",
            uploads_in_progress.clone(),
        );
        if let Some(c) = password_checks {
            registry.register(
                "password_checks",
                "bcrypt password comparisons run (dummy comparisons for unknown users included)",
                c,
            );
        }
        Metrics {
            registry,
            requests,
            latency,
            request_bytes,
            response_bytes,
            uploads_in_progress,
        }
    }

    /// Counts one request. `route` is one of the registry's endpoint names (a `&'static str`,
    /// so never a client's string).
    pub fn observe(&self, method: &Method, route: &'static str, status: u16, seconds: f64) {
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels { method, route })
            .observe(seconds);
    }

    pub fn request_bytes(&self, method: &Method) -> Counter {
        self.request_bytes
            .get_or_create(&MethodLabel {
                method: method_label(method),
            })
            .clone()
    }

    pub fn response_bytes(&self, route: &'static str) -> Counter {
        self.response_bytes
            .get_or_create(&RouteLabel { route })
            .clone()
    }

    pub fn set_uploads_in_progress(&self, n: usize) {
        self.uploads_in_progress
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A body that adds the size of every data frame to a counter as it passes.
#[derive(Debug)]
pub struct CountingBody<B> {
    inner: B,
    counter: Counter,
}

impl<B> CountingBody<B> {
    pub fn new(inner: B, counter: Counter) -> Self {
        CountingBody { inner, counter }
    }
}

impl<B> HttpBody for CountingBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counter.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_counters_histograms_and_gauges() {
        let m = Metrics::new(None);
        m.observe(&Method::GET, "blob", 200, 0.002);
        m.request_bytes(&Method::PUT).inc_by(10);
        m.set_uploads_in_progress(3);
        let text = m.encode();
        for needle in [
            "archway_registry_http_requests_total{method=\"GET\",route=\"blob\",status=\"200\"} 1",
            "archway_registry_http_request_duration_seconds_bucket{le=\"0.0032\",method=\"GET\",route=\"blob\"} 1",
            "archway_registry_http_request_bytes_total{method=\"PUT\"} 10",
            "archway_registry_uploads_in_progress 3",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn invented_methods_share_one_series() {
        let m = Metrics::new(None);
        for i in 0..500 {
            let method = Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
            m.observe(&method, "blob", 405, 0.001);
            m.request_bytes(&method).inc();
        }
        let text = m.encode();
        assert!(!text.contains("X1"), "{text}");
        assert!(
            text.contains(
                "archway_registry_http_requests_total{method=\"other\",route=\"blob\",status=\"405\"} 500"
            ),
            "{text}"
        );
        assert!(text.len() < 8 * 1024, "{} bytes", text.len());
    }
}
