//! Middleware: request ids, one log line per request and HTTP metrics by route pattern
//! (around every route), and the API-key check that each route group is mounted with
//! ([`require`]: the policy travels with the scope, not with a path string).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{web, Error, HttpMessage, HttpRequest, ResponseError};

use super::AppState;
use crate::auth::{bearer, Access, RouteGroup};
use crate::error::ApiError;
use crate::scheduler::GenerationReport;

/// Anthropic's API-key header.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The request-id header, echoed when the client sends a sane one, generated otherwise.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What is known about a request while it is served.
pub struct RequestRecord {
    /// Its id.
    pub id: String,
    reports: Mutex<Vec<Arc<GenerationReport>>>,
}

/// Links a generation to the request that started it (for the log line).
pub fn attach_generation(req: &HttpRequest, report: Arc<GenerationReport>) {
    if let Some(record) = req.extensions().get::<Arc<RequestRecord>>() {
        if let Ok(mut reports) = record.reports.lock() {
            reports.push(report);
        }
    }
}

fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Request id, HTTP metrics and the access log line (written when the body ends).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<LoggedBody>, Error> {
    let id = request_id(&req);
    let record = Arc::new(RequestRecord {
        id: id.clone(),
        reports: Mutex::new(Vec::new()),
    });
    req.extensions_mut().insert(record.clone());
    let method = req.method().to_string();
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let started = Instant::now();
    let mut res = next.call(req).await?;
    // The pattern of the route the decoded path matched (`req.match_pattern()` reads the
    // raw path, so `/%76%31/models` would count as unmatched).
    let endpoint = {
        let r = res.request();
        r.resource_map()
            .match_pattern(r.match_info().as_str())
            .unwrap_or_else(|| "unmatched".into())
    };
    let status = res.status().as_u16();
    if let Some(metrics) = &metrics {
        let class = format!("{}xx", status / 100);
        metrics
            .http_requests
            .with_label_values(&[endpoint.as_str(), class.as_str()])
            .inc();
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(res.map_body(move |_, body| LoggedBody {
        inner: body.boxed(),
        log: Some(AccessLog {
            record,
            method,
            endpoint,
            status,
            started,
        }),
    }))
}

struct AccessLog {
    record: Arc<RequestRecord>,
    method: String,
    endpoint: String,
    status: u16,
    started: Instant,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let reports = self
            .record
            .reports
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        let model = reports.first().map(|r| r.model.as_str()).unwrap_or("");
        let prompt_tokens: usize = reports.iter().map(|r| r.prompt_tokens()).sum();
        let completion_tokens: usize = reports.iter().map(|r| r.completion_tokens()).sum();
        let ttft_ms = reports
            .iter()
            .filter_map(|r| r.ttft())
            .min()
            .map(|d| d.as_secs_f64() * 1e3);
        tracing::info!(
            request_id = %self.record.id,
            method = %self.method,
            endpoint = %self.endpoint,
            status = self.status,
            model,
            prompt_tokens,
            completion_tokens,
            ttft_ms,
            duration_ms = self.started.elapsed().as_secs_f64() * 1e3,
            "request"
        );
    }
}

/// A response body that writes the access log line when it is finished or dropped.
pub struct LoggedBody {
    inner: BoxBody,
    log: Option<AccessLog>,
}

impl MessageBody for LoggedBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(None) = polled {
            self.log.take();
        }
        polled
    }
}

/// The access rule of a group of routes, as a type: `from_fn(require::<AdminRoutes, _>)`.
pub trait Policy {
    /// The group whose rule applies.
    const GROUP: RouteGroup;
    /// Refusals in Anthropic's envelope instead of OpenAI's.
    const ANTHROPIC: bool = false;
}

/// `/v1/messages/*`: the API group's rule, refusals in Anthropic's envelope.
pub struct MessagesRoutes;

impl Policy for MessagesRoutes {
    const GROUP: RouteGroup = RouteGroup::Api;
    const ANTHROPIC: bool = true;
}

macro_rules! policies {
    ($($(#[$doc:meta])* $name:ident => $group:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            pub struct $name;
            impl Policy for $name {
                const GROUP: RouteGroup = RouteGroup::$group;
            }
        )*
    };
}

policies! {
    /// `/v1/*`.
    ApiRoutes => Api,
    /// `/admin/*`.
    AdminRoutes => Admin,
    /// `/metrics`.
    MetricsRoutes => Metrics,
    /// `/health`.
    HealthRoutes => Health,
    /// `/docs/*`, `/openapi.json`.
    DocsRoutes => Docs,
    /// `/`.
    UiRoutes => Ui,
}

/// Refuses requests without the key their route group needs (401, or 403 for admin
/// routes from another machine when no admin key is configured), in OpenAI's envelope.
/// Wraps a scope or resource, so it runs only for requests the router sent there,
/// however their path was spelled.
pub async fn require<P: Policy, B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        // No state means no keys could be checked: refuse rather than serve.
        let response = ApiError::Engine("the server is not configured".into()).error_response();
        return Ok(req.into_response(response).map_into_right_body());
    };
    let keys = &state.keys;
    let access = keys.access(P::GROUP);
    // `Authorization: Bearer` (OpenAI's clients) or `x-api-key` (Anthropic's).
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .or_else(|| {
            req.headers()
                .get(X_API_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|k| !k.is_empty())
        });
    let refusal = match access {
        Access::Open => None,
        Access::Admin if !keys.has_admin_keys() => {
            let loopback = req.peer_addr().is_some_and(|a| a.ip().is_loopback());
            (!loopback).then(|| {
                ApiError::Forbidden(
                    "admin endpoints answer only to clients on this machine unless admin keys are configured"
                        .into(),
                )
            })
        }
        _ if keys.allows(access, presented) => None,
        _ => Some(ApiError::Unauthorized(match presented {
            None => {
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.".into()
            }
            Some(_) if access == Access::Admin => "Incorrect admin key provided.".into(),
            Some(_) => "Incorrect API key provided.".into(),
        })),
    };
    match refusal {
        None => Ok(next.call(req).await?.map_into_left_body()),
        Some(error) => {
            let response = if P::ANTHROPIC {
                crate::error::AnthropicError(error).error_response()
            } else {
                error.error_response()
            };
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}
