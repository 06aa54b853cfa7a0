//! Logs (tracing) and metrics (Prometheus text on `/metrics`).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`, with sqlx's notices quieted).
pub fn init_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Latency buckets in seconds: fine below 10 ms, where a healthy HAP answers.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder, installed on first use. Metrics are global in the
/// `metrics` crate, so every server in one process (as in tests) shares it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first, in which case HAP's metrics
            // go there and /metrics shows what this recorder saw (nothing): not worth failing for.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// Counts every command and query by route and status, and times them.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let Some(route) = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
    else {
        return next.run(request).await;
    };
    // The console's pages are neither commands nor queries: counted, their sign-ins and live
    // streams would blur the clients' rates and latencies.
    if route.starts_with("/health")
        || route.starts_with("/console")
        || route == "/metrics"
        || route == "/openapi.json"
    {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    // Written out rather than formatted from the kind: English plurals do not follow one rule.
    let (total, duration) = if method == Method::GET {
        ("hap_queries_total", "hap_query_duration_seconds")
    } else {
        ("hap_commands_total", "hap_command_duration_seconds")
    };
    let route = format!("{method} {route}");
    let status = response.status().as_u16().to_string();
    metrics::counter!(total, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(duration, "route" => route).record(started.elapsed().as_secs_f64());
    response
}
