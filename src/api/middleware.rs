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
use crate::auth::limits::{Lease, Now, Refusal, Snapshot};
use crate::auth::{bearer, Access, Caller, RouteGroup};
use crate::error::ApiError;
use crate::metrics::Metrics;
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
    key: Mutex<KeyUse>,
}

/// The caller of a request and, for a named key with limits, its place in them.
#[derive(Default)]
struct KeyUse {
    caller: Option<Caller>,
    lease: Option<Lease>,
}

fn record(req: &HttpRequest) -> Option<Arc<RequestRecord>> {
    req.extensions().get::<Arc<RequestRecord>>().cloned()
}

/// Who sent the request (by its key); `Anonymous` on an open route without one.
pub fn caller(req: &HttpRequest) -> Caller {
    record(req)
        .and_then(|r| r.key.lock().ok()?.caller.clone())
        .unwrap_or(Caller::Anonymous)
}

/// Reserves the request's tokens against its named key's `tpm` and `daily_tokens`:
/// `estimate` when it has an upper bound, else the rest of the budget.
pub fn reserve_tokens(req: &HttpRequest, estimate: Option<u64>) -> Result<(), ApiError> {
    let Some(record) = record(req) else {
        return Ok(());
    };
    let Ok(mut key) = record.key.lock() else {
        return Ok(());
    };
    let Some(lease) = key.lease.as_mut() else {
        return Ok(());
    };
    let name = lease.limiter().name.clone();
    lease
        .reserve(estimate, Now::current())
        .map_err(|refusal| limited(&name, refusal))
}

fn limited(key: &str, refusal: Refusal) -> ApiError {
    ApiError::KeyLimited {
        key: key.to_string(),
        limit: refusal.limit,
        value: refusal.value,
        retry_after: refusal.retry_after,
    }
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
        key: Mutex::new(KeyUse::default()),
    });
    req.extensions_mut().insert(record.clone());
    let method = req.method().to_string();
    let (metrics, usage) = req
        .app_data::<web::Data<AppState>>()
        .map(|s| (s.metrics.clone(), s.usage.clone()))
        .unzip();
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
            metrics,
            usage,
        }),
    }))
}

struct AccessLog {
    record: Arc<RequestRecord>,
    method: String,
    endpoint: String,
    status: u16,
    started: Instant,
    metrics: Option<Arc<Metrics>>,
    usage: Option<Arc<crate::usage::UsageStore>>,
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
        // The key's use: its lease ends charged with the tokens, its counters grow.
        let key = self
            .record
            .key
            .lock()
            .map(|mut k| (k.caller.clone(), k.lease.take()))
            .unwrap_or((None, None));
        if let Some(lease) = key.1 {
            lease.finish((prompt_tokens + completion_tokens) as u64, Now::current());
        }
        if let (Some(caller), Some(usage)) = (&key.0, &self.usage) {
            // Memory only: the store's flush task writes it.
            usage.record(
                crate::usage::unix_now(),
                caller.label(),
                model,
                crate::usage::Counts {
                    requests: 1,
                    errors: u64::from(self.status >= 400),
                    prompt_tokens: prompt_tokens as u64,
                    completion_tokens: completion_tokens as u64,
                },
            );
        }
        if let (Some(caller), Some(metrics)) = (&key.0, &self.metrics) {
            let labels = [caller.label(), model];
            metrics.key_requests.with_label_values(&labels).inc();
            if self.status >= 400 {
                metrics.key_errors.with_label_values(&labels).inc();
            }
            metrics
                .key_prompt_tokens
                .with_label_values(&labels)
                .inc_by(prompt_tokens as u64);
            metrics
                .key_completion_tokens
                .with_label_values(&labels)
                .inc_by(completion_tokens as u64);
        }
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
        _ if keys.caller(access, presented).is_some() => None,
        _ => Some(ApiError::Unauthorized(match presented {
            None => {
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.".into()
            }
            Some(_) if access == Access::Admin => "Incorrect admin key provided.".into(),
            Some(k) if keys.is_disabled(k) => "This API key is disabled.".into(),
            Some(_) => "Incorrect API key provided.".into(),
        })),
    };
    let mut refusal = refusal;
    let mut snapshot = None;
    // The API's callers are counted and limited; the other groups only checked.
    if refusal.is_none() && P::GROUP == RouteGroup::Api {
        let caller = keys.caller(access, presented).unwrap_or(Caller::Anonymous);
        if let Caller::Named(key) = &caller {
            if key.limiter.limits_anything() {
                let now = Now::current();
                match key.limiter.admit(now) {
                    Ok(lease) => {
                        if let Some(record) = req.extensions().get::<Arc<RequestRecord>>() {
                            if let Ok(mut k) = record.key.lock() {
                                k.lease = Some(lease);
                            }
                        }
                    }
                    Err(r) => {
                        state
                            .metrics
                            .key_rate_limited
                            .with_label_values(&[key.limiter.name.as_str(), r.limit])
                            .inc();
                        refusal = Some(limited(&key.limiter.name, r));
                    }
                }
                snapshot = Some(key.limiter.snapshot(now));
            }
        }
        if let Some(record) = req.extensions().get::<Arc<RequestRecord>>() {
            if let Ok(mut k) = record.key.lock() {
                k.caller = Some(caller);
            }
        }
    }
    let mut response = match refusal {
        None => next.call(req).await?.map_into_left_body(),
        Some(error) => {
            let response = if P::ANTHROPIC {
                crate::error::AnthropicError(error).error_response()
            } else {
                error.error_response()
            };
            req.into_response(response).map_into_right_body()
        }
    };
    if let Some(snapshot) = snapshot {
        rate_limit_headers(response.headers_mut(), &snapshot);
    }
    Ok(response)
}

/// OpenAI's `x-ratelimit-*` headers for a named key's limits (replacing any an upstream
/// sent: they speak of llamagate's key there, not of the client's).
fn rate_limit_headers(headers: &mut actix_web::http::header::HeaderMap, snapshot: &Snapshot) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    if let Some((limit, remaining, reset)) = snapshot.requests {
        set("x-ratelimit-limit-requests", limit.to_string());
        set("x-ratelimit-remaining-requests", remaining.to_string());
        set("x-ratelimit-reset-requests", reset_text(reset));
    }
    if let Some((limit, remaining, reset)) = snapshot.tokens {
        set("x-ratelimit-limit-tokens", limit.to_string());
        set("x-ratelimit-remaining-tokens", remaining.to_string());
        set("x-ratelimit-reset-tokens", reset_text(reset));
    }
}

/// A reset time as OpenAI writes it: `0s`, `12s`, `1m0s`.
fn reset_text(secs: u64) -> String {
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m{}s", secs / 60, secs % 60)
    }
}
