//! The admission webhooks, on 8443 with TLS: `/inject` (mutating, pods) adds palisade's
//! containers as [`crate::inject`] decides, and `/validate` (validating, policies) refuses
//! a policy palisade would reject, with the message `palisade simulate` gives.

pub mod validate;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::inject::{self, Decision, InjectOptions};
use crate::metrics;

/// The largest AdmissionReview accepted (the API server's own request limit is 3 MiB).
const MAX_BODY: usize = 8 << 20;

/// What the webhook server needs.
pub struct Webhook {
    /// How pods are injected.
    pub inject: InjectOptions,
    /// Where pods' namespaces are read (their inject label and mode annotation).
    pub client: Option<kube::Client>,
}

/// The mutating webhook's answer for one pod, given its namespace.
pub fn mutate(
    req: &AdmissionRequest<Pod>,
    ns: Option<&Namespace>,
    options: &InjectOptions,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    let Some(pod) = &req.object else {
        return response;
    };
    let mut pod = pod.clone();
    if pod.metadata.namespace.is_none() {
        pod.metadata.namespace = req.namespace.clone();
    }
    let (result, response) = match inject::review(&pod, ns, options) {
        Decision::Leave { reason, warnings } => {
            tracing::debug!(pod = %inject::pod_name(&pod), %reason, "not injected");
            let mut response = response;
            response.warnings = (!warnings.is_empty()).then_some(warnings);
            ("left", response)
        }
        Decision::Inject { patch, warnings } => match response.clone().with_patch(patch) {
            Ok(mut response) => {
                response.warnings = (!warnings.is_empty()).then_some(warnings);
                ("injected", response)
            }
            Err(e) => (
                "error",
                response.deny(format!("cannot encode the patch: {e}")),
            ),
        },
        Decision::Refuse { message } => {
            tracing::info!(pod = %inject::pod_name(&pod), %message, "refused");
            let mut response = response.deny(message);
            response.result.code = 403;
            response.result.reason = "Forbidden".into();
            ("refused", response)
        }
    };
    ::metrics::counter!(metrics::WEBHOOK_REQUESTS, "webhook" => "inject", "result" => result)
        .increment(1);
    response
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn reply(response: AdmissionResponse) -> Response<Full<Bytes>> {
    match serde_json::to_vec(&response.into_review()) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string().into_bytes(),
        ),
    }
}

fn bad_request(message: String) -> Response<Full<Bytes>> {
    reply(AdmissionResponse::invalid(message))
}

async fn namespace(client: Option<&kube::Client>, name: Option<&str>) -> Option<Namespace> {
    let (client, name) = (client?, name?);
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    match api.get_opt(name).await {
        Ok(ns) => ns,
        Err(e) => {
            // The pod's own annotations still apply; its namespace's label and mode do not.
            tracing::warn!(namespace = name, error = %e, "cannot read the pod's namespace");
            None
        }
    }
}

async fn handle(req: Request<Incoming>, hook: Arc<Webhook>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if req.method() != Method::POST || !matches!(path.as_str(), "/inject" | "/validate") {
        return json_response(
            StatusCode::NOT_FOUND,
            b"{\"error\":\"POST an AdmissionReview to /inject or /validate\"}".to_vec(),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad_request(format!("cannot read the request: {e}")),
    };
    if path == "/inject" {
        let review: AdmissionReview<Pod> = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return bad_request(format!("not an AdmissionReview of a Pod: {e}")),
        };
        let request: AdmissionRequest<Pod> = match review.try_into() {
            Ok(r) => r,
            Err(e) => return bad_request(format!("{e}")),
        };
        let ns = namespace(hook.client.as_ref(), request.namespace.as_deref()).await;
        reply(mutate(&request, ns.as_ref(), &hook.inject))
    } else {
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return bad_request(format!("not an AdmissionReview: {e}")),
        };
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(e) => return bad_request(format!("{e}")),
        };
        let response = validate::validate(&request);
        let result = match (response.allowed, &response.warnings) {
            (false, _) => "refused",
            (true, Some(_)) => "warned",
            (true, None) => "allowed",
        };
        ::metrics::counter!(metrics::WEBHOOK_REQUESTS, "webhook" => "validate", "result" => result)
            .increment(1);
        reply(response)
    }
}

/// Serves the webhooks over TLS forever.
pub async fn serve(listener: TcpListener, tls: rustls::ServerConfig, hook: Arc<Webhook>) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a webhook connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, hook) = (acceptor.clone(), hook.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
            };
            let service = service_fn(move |req| {
                let hook = hook.clone();
                async move { Ok::<_, Infallible>(handle(req, hook).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
