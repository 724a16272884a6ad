//! The proxy's Prometheus metrics: their names, labels, and the recorder behind `/metrics`.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// New connections (TCP) and sessions (UDP), by direction, protocol and action.
pub const FLOWS: &str = "palisade_flows_total";
/// Bytes relayed, by direction and action, counted when a flow ends.
pub const BYTES: &str = "palisade_bytes_total";
/// Flows open now, by direction and protocol.
pub const OPEN: &str = "palisade_flows_open";
/// Open flows closed because a new policy no longer allows them, by direction.
pub const CLOSED_BY_POLICY: &str = "palisade_flows_closed_by_policy_total";
/// Seconds a verdict took.
pub const DECISION_SECONDS: &str = "palisade_decision_seconds";
/// The version of the policy in force (0 before the first).
pub const POLICY_VERSION: &str = "palisade_policy_version";
/// Policies received.
pub const POLICY_UPDATES: &str = "palisade_policy_updates_total";
/// Problems with the policy stream, by reason.
pub const STREAM_ERRORS: &str = "palisade_policy_stream_errors_total";
/// Errors accepting or setting up flows, by listener and reason.
pub const LISTENER_ERRORS: &str = "palisade_listener_errors_total";
/// 1 when inbound connections reach the app from the client's own address, 0 when the
/// proxy lacks the capability and they come from the pod's.
pub const INBOUND_TRANSPARENT: &str = "palisade_inbound_transparent";
/// Inbound connections made from the pod's address rather than the client's, by reason.
pub const INBOUND_SOURCE_FALLBACKS: &str = "palisade_inbound_source_fallbacks_total";
/// HTTP requests judged on inspected connections, by direction, action and status.
pub const HTTP_REQUESTS: &str = "palisade_http_requests_total";
/// Connections inspected as HTTP, by direction and what they turned out to speak.
pub const INSPECTED: &str = "palisade_inspected_connections_total";
/// DNS queries through the DNS proxy, by verdict (`allowed`, `denied`: no rule allows the
/// flow to the server; `refused`: DNS rules refuse the name; `malformed`; `failed`: the
/// server did not answer).
pub const DNS_QUERIES: &str = "palisade_dns_queries_total";
/// Names in the pod's DNS cache.
pub const DNS_NAMES: &str = "palisade_dns_names";
/// Addresses (name and address pairs) in the pod's DNS cache.
pub const DNS_RECORDS: &str = "palisade_dns_cache_records";
/// Records evicted from a full DNS cache, by reason (`names`, `addresses-per-name`).
pub const DNS_EVICTIONS: &str = "palisade_dns_cache_evictions_total";
/// Lookups of the policy's `matchName` names by the proxy itself, by result.
pub const DNS_RESOLUTIONS: &str = "palisade_dns_resolutions_total";
/// Connections whose TLS server name (or HTTP `Host`) was checked for `requireSNI`, by
/// action.
pub const SNI_CHECKS: &str = "palisade_sni_checks_total";
/// Flow log lines dropped because the writer could not keep up.
pub const FLOW_LOG_DROPPED: &str = "palisade_flow_log_dropped_total";

/// Flow report batches posted to the controller, by result (`sent`, `failed`).
pub const FLOW_BATCHES: &str = "palisade_flow_batches_total";
/// Flow records not reported, by reason (`queue-full`, `send-failed`).
pub const FLOW_RECORDS_DROPPED: &str = "palisade_flow_records_dropped_total";

/// Installs the global recorder and returns the handle `/metrics` renders.
pub fn install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(DECISION_SECONDS.to_owned()),
            &[1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 1e-4, 1e-3],
        )
        .ok()?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    describe();
    Some(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        FLOWS,
        "New connections and UDP sessions judged, by direction, protocol and action"
    );
    describe_counter!(BYTES, "Bytes relayed, by direction and action");
    describe_gauge!(OPEN, "Connections and UDP sessions open now");
    describe_counter!(
        CLOSED_BY_POLICY,
        "Open flows closed because a new policy no longer allows them"
    );
    describe_histogram!(
        DECISION_SECONDS,
        metrics::Unit::Seconds,
        "Time to judge a flow"
    );
    describe_gauge!(
        POLICY_VERSION,
        "Version of the policy in force; 0 before the first"
    );
    describe_counter!(POLICY_UPDATES, "Policies received from the controller");
    describe_counter!(STREAM_ERRORS, "Problems with the policy stream, by reason");
    describe_counter!(
        LISTENER_ERRORS,
        "Errors accepting or setting up flows, by listener and reason"
    );
    describe_gauge!(
        INBOUND_TRANSPARENT,
        "1 when the app sees inbound clients' own addresses, 0 when it sees the pod's"
    );
    describe_counter!(
        INBOUND_SOURCE_FALLBACKS,
        "Inbound connections made from the pod's address rather than the client's, by reason"
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests judged on inspected connections, by direction, action and status"
    );
    describe_counter!(
        INSPECTED,
        "Connections inspected as HTTP, by direction and detected protocol (http1, http2, tls, other, silent)"
    );
    describe_counter!(
        FLOW_BATCHES,
        "Flow report batches posted to the controller, by result (sent, failed)"
    );
    describe_counter!(
        FLOW_RECORDS_DROPPED,
        "Flow records not reported to the controller, by reason (queue-full, send-failed)"
    );
    describe_counter!(
        DNS_QUERIES,
        "DNS queries through the DNS proxy, by verdict (allowed, denied, refused, malformed, failed)"
    );
    describe_gauge!(DNS_NAMES, "Names in the pod's DNS cache");
    describe_gauge!(DNS_RECORDS, "Name and address pairs in the pod's DNS cache");
    describe_counter!(
        DNS_EVICTIONS,
        "Records evicted from a full DNS cache, by reason (names, addresses-per-name)"
    );
    describe_counter!(
        DNS_RESOLUTIONS,
        "Lookups of the policy's matchName names by the proxy itself, by result (ok, failed)"
    );
    describe_counter!(
        SNI_CHECKS,
        "Connections whose TLS server name or HTTP Host was checked for requireSNI, by action"
    );
    describe_counter!(
        FLOW_LOG_DROPPED,
        "Flow log lines dropped because the writer could not keep up"
    );
}

/// Counts a judged flow.
pub fn counter_flow(flow: &crate::judge::FlowInfo, action: palisade_policy::verdict::Action) {
    metrics::counter!(
        FLOWS,
        "direction" => flow.label(),
        "protocol" => flow.protocol.as_str(),
        "action" => action.as_str()
    )
    .increment(1);
}

/// Counts the bytes a flow moved, when it ends.
pub fn count_bytes(
    flow: &crate::judge::FlowInfo,
    action: palisade_policy::verdict::Action,
    bytes: u64,
) {
    metrics::counter!(BYTES, "direction" => flow.label(), "action" => action.as_str())
        .increment(bytes);
}
