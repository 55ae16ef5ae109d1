//! Prometheus metrics at `GET /metrics`.
//!
//! Why it exists: operators need connection counts, room counts, flush latency, closes by code
//! and slow-consumer closes on the wedding day. Code records with the `metrics` facade
//! (`metrics::counter!` etc.); this module installs the Prometheus exporter once per process
//! and renders it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (idempotent: in-process tests start several servers).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (an embedding application's):
            // then we still render our handle, which simply stays empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Renders the Prometheus text format.
pub fn render() -> String {
    install().render()
}
