//! Named keys at run time and usage: `GET /admin/keys` (every named key, its limits and
//! what it uses now), `POST /admin/keys` (a new key; its secret is in this answer only),
//! `POST /admin/keys/{name}/disable` and `/enable`, `DELETE /admin/keys/{name}`, and
//! `GET /admin/usage?since=` (requests, errors and tokens per key name and model, from the
//! usage store). Mounted inside the `/admin` scope, so they need an admin key (or, without
//! admin keys, a loopback client).
//!
//! Also the glue between the usage store and the running server: [`restore`] reads the
//! run-time keys, disabled keys and counters back at start-up, [`keep_flushing`] writes the
//! counters every `auth.store_flush_secs`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use utoipa::ToSchema;

use super::AppState;
use crate::auth::limits::{LiveUse, Now};
use crate::auth::{AddKeyError, KeyOrigin, KeySpec, NamedKey, MAX_NAMED_KEYS};
use crate::error::ApiError;
use crate::usage::{unix_now, Counts, StoredKey, UsageRow};

/// Mounts the routes (inside the `/admin` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/keys")
            .route(web::get().to(list_keys))
            .route(web::post().to(create_key))
            .default_service(web::to(super::only_get_or_post)),
    )
    .service(
        web::resource("/keys/{name}/disable")
            .route(web::post().to(disable_key))
            .default_service(web::to(super::only_post)),
    )
    .service(
        web::resource("/keys/{name}/enable")
            .route(web::post().to(enable_key))
            .default_service(web::to(super::only_post)),
    )
    .service(
        web::resource("/keys/{name}")
            .route(web::delete().to(delete_key))
            .default_service(web::to(super::only_delete)),
    )
    .service(
        web::resource("/usage")
            .route(web::get().to(usage))
            .default_service(web::to(super::only_get)),
    );
}

/// A named key as `/admin/keys` shows it (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyInfo {
    /// Always `key`.
    pub object: &'static str,
    /// Its name (the `key` label of the metrics and usage).
    pub name: String,
    /// `config` (`[[auth.keys]]`; removed only there) or `runtime` (`POST /admin/keys`).
    pub origin: &'static str,
    /// Unix seconds it was made (run-time keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    /// Whether it is disabled (refused with 401 until enabled).
    pub disabled: bool,
    /// Its allow-list and limits.
    #[serde(flatten)]
    pub spec: KeySpec,
    /// What it uses now; counted for keys with a limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveUse>,
}

impl KeyInfo {
    fn of(key: &NamedKey) -> Self {
        let (origin, created) = match key.origin {
            KeyOrigin::Config => ("config", None),
            KeyOrigin::Runtime { created } => ("runtime", Some(created)),
        };
        Self {
            object: "key",
            name: key.name().to_string(),
            origin,
            created,
            disabled: key.is_disabled(),
            spec: key.spec.clone(),
            live: key
                .limiter
                .limits_anything()
                .then(|| key.limiter.live(Now::current())),
        }
    }
}

/// `GET /admin/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Always `list`.
    pub object: &'static str,
    /// The named keys, configured ones first.
    pub data: Vec<KeyInfo>,
}

/// `POST /admin/keys`: a new named key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Its name: 1 to 64 letters, digits, `-`, `_` or `.`; unique.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// Models (names or aliases) it may use; absent = all.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Requests per minute.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub tpm: Option<u64>,
    /// Requests at once.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_concurrent: Option<u32>,
    /// Tokens (prompt + completion) per UTC day.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub daily_tokens: Option<u64>,
}

/// The answer to `POST /admin/keys`: the key and, this once, its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The key as `GET /admin/keys` shows it.
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The secret (`lg-` and 64 hexadecimal digits). Shown only here: the server keeps
    /// only its SHA-256.
    pub key: String,
}

/// `DELETE /admin/keys/{name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedKey {
    /// The key's name.
    pub name: String,
    /// Always `key`.
    pub object: &'static str,
    /// Always `true`.
    pub deleted: bool,
}

fn invalid(param: &str, message: String) -> ApiError {
    ApiError::InvalidRequest {
        message,
        param: Some(param.to_string()),
        code: None,
    }
}

fn no_key(name: &str) -> ApiError {
    ApiError::NotFound {
        message: format!(
            "No named key `{}`.",
            name.chars().take(64).collect::<String>()
        ),
        param: None,
    }
}

fn store_failed(what: &str) -> impl FnOnce(String) -> ApiError + '_ {
    move |e| {
        tracing::error!(error = %e, "usage store: {what}");
        ApiError::Engine(format!("the key store could not {what}"))
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    web::block(work)
        .await
        .map_err(|_| "the store's worker failed".to_string())?
}

/// Every named key: origin, allow-list, limits, whether disabled, and (for keys with a
/// limit) what it uses now.
#[utoipa::path(get, path = "/admin/keys", tag = "admin",
    responses((status = 200, body = KeyList), (status = 401, body = crate::error::ErrorEnvelope),
        (status = 403, body = crate::error::ErrorEnvelope)))]
pub async fn list_keys(state: web::Data<AppState>) -> HttpResponse {
    let data = state.keys.named().iter().map(|k| KeyInfo::of(k)).collect();
    HttpResponse::Ok().json(KeyList {
        object: "list",
        data,
    })
}

/// Makes a named key, with an optional allow-list and limits. The answer holds its secret,
/// shown this once (the server keeps only its SHA-256, in the usage store, so the key
/// survives a restart). The first API key of a server that had none closes the API to
/// callers without a key.
#[utoipa::path(post, path = "/admin/keys", tag = "admin", request_body = NewKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = crate::error::ErrorEnvelope),
        (status = 401, body = crate::error::ErrorEnvelope), (status = 403, body = crate::error::ErrorEnvelope),
        (status = 409, body = crate::error::ErrorEnvelope)))]
pub async fn create_key(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let new: NewKey = crate::validation::parse_json(&body)?;
    let spec = KeySpec {
        models: new.models,
        rpm: new.rpm,
        tpm: new.tpm,
        max_concurrent: new.max_concurrent,
        daily_tokens: new.daily_tokens,
    };
    let secret = format!(
        "lg-{}",
        rand::rng()
            .random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let settings = spec.settings(&new.name, secret.clone());
    settings.check().map_err(|(field, m)| invalid(field, m))?;
    for (i, model) in spec.models.iter().flatten().enumerate() {
        if state.scheduler.registry().resolve(model).is_err() {
            return Err(invalid(
                &format!("models[{i}]"),
                format!(
                    "`models[{i}]`: no model `{}` on this server",
                    model.chars().take(128).collect::<String>()
                ),
            ));
        }
    }
    let taken = || {
        ApiError::Conflict(format!(
            "A named key `{}` exists; pick another name or delete it first.",
            new.name
        ))
    };
    if state.keys.find(&new.name).is_some() {
        return Err(taken());
    }
    let digest: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
    let created = unix_now();
    let stored = StoredKey {
        name: new.name.clone(),
        digest,
        settings: serde_json::to_string(&spec).unwrap_or_else(|_| "{}".into()),
        created,
    };
    let store = state.usage.clone();
    let added = blocking(move || store.add_key(&stored))
        .await
        .map_err(store_failed("keep the key"))?;
    if !added {
        return Err(taken());
    }
    let key = match state.keys.add(NamedKey::new(
        &settings,
        digest,
        KeyOrigin::Runtime { created },
    )) {
        Ok(key) => key,
        Err(refused) => {
            // Full, or made meanwhile by another request: undo the stored copy of this one.
            let store = state.usage.clone();
            let name = new.name.clone();
            let _ = blocking(move || store.delete_key(&name)).await;
            return Err(match refused {
                AddKeyError::NameTaken => taken(),
                AddKeyError::Full => ApiError::Conflict(format!(
                    "This server holds {MAX_NAMED_KEYS} named keys, the most it keeps; delete one first."
                )),
            });
        }
    };
    tracing::info!(key = %key.name(), "named key made");
    Ok(HttpResponse::Created().json(CreatedKey {
        info: KeyInfo::of(&key),
        key: secret,
    }))
}

async fn set_disabled(
    state: web::Data<AppState>,
    name: String,
    disabled: bool,
) -> Result<HttpResponse, ApiError> {
    let key = state.keys.find(&name).ok_or_else(|| no_key(&name))?;
    let store = state.usage.clone();
    blocking(move || store.set_disabled(&name, disabled))
        .await
        .map_err(store_failed("keep the change"))?;
    key.set_disabled(disabled);
    tracing::info!(key = %key.name(), disabled, "named key changed");
    Ok(HttpResponse::Ok().json(KeyInfo::of(&key)))
}

/// Disables a named key: new requests with it are refused (401) until it is enabled;
/// requests it has running finish. Kept across restarts, for configured keys too.
#[utoipa::path(post, path = "/admin/keys/{name}/disable", tag = "admin", params(("name" = String, Path, description = "The key's name")),
    responses((status = 200, body = KeyInfo), (status = 401, body = crate::error::ErrorEnvelope),
        (status = 403, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope)))]
pub async fn disable_key(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_disabled(state, name.into_inner(), true).await
}

/// Enables a disabled named key.
#[utoipa::path(post, path = "/admin/keys/{name}/enable", tag = "admin", params(("name" = String, Path, description = "The key's name")),
    responses((status = 200, body = KeyInfo), (status = 401, body = crate::error::ErrorEnvelope),
        (status = 403, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope)))]
pub async fn enable_key(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_disabled(state, name.into_inner(), false).await
}

/// Deletes a key made at run time (its usage stays in `/admin/usage`). A key from the
/// configuration file is removed there; here it can only be disabled (409).
#[utoipa::path(delete, path = "/admin/keys/{name}", tag = "admin", params(("name" = String, Path, description = "The key's name")),
    responses((status = 200, body = DeletedKey), (status = 401, body = crate::error::ErrorEnvelope),
        (status = 403, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope),
        (status = 409, body = crate::error::ErrorEnvelope)))]
pub async fn delete_key(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    let key = state.keys.find(&name).ok_or_else(|| no_key(&name))?;
    if key.origin == KeyOrigin::Config {
        return Err(ApiError::Conflict(format!(
            "The key `{name}` is defined in the configuration file ([[auth.keys]]): remove it there, or disable it here."
        )));
    }
    let store = state.usage.clone();
    let stored_name = name.clone();
    blocking(move || store.delete_key(&stored_name))
        .await
        .map_err(store_failed("delete the key"))?;
    state.keys.remove(&name);
    tracing::info!(key = %name, "named key deleted");
    Ok(HttpResponse::Ok().json(DeletedKey {
        name,
        object: "key",
        deleted: true,
    }))
}

/// `GET /admin/usage` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// From when: Unix seconds, `YYYY-MM-DD` (UTC midnight) or `YYYY-MM-DDTHH:MM:SSZ`;
    /// rounded down to its hour. Default: since the store began.
    pub since: Option<String>,
    /// Only this key name (`unnamed`, `admin`, `anonymous` for callers without a named key).
    pub key: Option<String>,
    /// Only this model.
    pub model: Option<String>,
}

/// `GET /admin/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    /// Always `list`.
    pub object: &'static str,
    /// Unix seconds the counts start at (the hour `since` falls in).
    pub since: i64,
    /// Per key name and model.
    pub data: Vec<UsageRow>,
    /// All of `data` summed.
    pub total: Counts,
}

/// Requests, errors and tokens per key name and model since a time, from the usage store
/// (kept across restarts; the counts of the last `auth.store_flush_secs` included).
#[utoipa::path(get, path = "/admin/usage", tag = "admin", params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = crate::error::ErrorEnvelope),
        (status = 401, body = crate::error::ErrorEnvelope), (status = 403, body = crate::error::ErrorEnvelope)))]
pub async fn usage(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<UsageQuery>::from_query(req.query_string())
        .map_err(|e| {
            invalid(
                "since",
                format!("bad query: {e}; use ?since=, ?key=, ?model="),
            )
        })?
        .into_inner();
    let since = match query.since.as_deref() {
        None => 0,
        Some(text) => crate::usage::parse_since(text).ok_or_else(|| {
            invalid(
                "since",
                "`since`: Unix seconds, `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ`".into(),
            )
        })?,
    };
    let since = since - since.rem_euclid(3600);
    let store = state.usage.clone();
    let rows = blocking(move || store.usage_since(since))
        .await
        .map_err(store_failed("read the usage"))?;
    let data: Vec<UsageRow> = rows
        .into_iter()
        .filter(|r| query.key.as_ref().is_none_or(|k| *k == r.key))
        .filter(|r| query.model.as_ref().is_none_or(|m| *m == r.model))
        .collect();
    let mut total = Counts::default();
    for row in &data {
        total.add(&row.counts);
    }
    Ok(HttpResponse::Ok().json(UsageReport {
        object: "list",
        since,
        data,
        total,
    }))
}

/// At start-up: the keys made at run time and the disabled keys come back from the store,
/// the per-key counters start from what it holds, and each key's `daily_tokens` from what
/// it used today (blocks; called before serving).
pub fn restore(state: &AppState) -> Result<(), String> {
    let store = &state.usage;
    for stored in store.keys()? {
        let Ok(spec) = serde_json::from_str::<KeySpec>(&stored.settings) else {
            tracing::warn!(key = %stored.name, "a stored key's settings do not read: left out");
            continue;
        };
        let settings = spec.settings(&stored.name, String::new());
        let key = NamedKey::new(
            &settings,
            stored.digest,
            KeyOrigin::Runtime {
                created: stored.created,
            },
        );
        match state.keys.add(key) {
            Ok(_) => {}
            Err(AddKeyError::NameTaken) => {
                tracing::warn!(key = %stored.name, "a key made at run time has the name of a configured key: the configured one is used")
            }
            Err(AddKeyError::Full) => {
                tracing::warn!(key = %stored.name, "more named keys than a server keeps: left out")
            }
        }
    }
    for name in store.disabled_keys()? {
        if let Some(key) = state.keys.find(&name) {
            key.set_disabled(true);
        }
    }
    let metrics = &state.metrics;
    for row in store.usage_since(0)? {
        let labels = [row.key.as_str(), row.model.as_str()];
        metrics
            .key_requests
            .with_label_values(&labels)
            .inc_by(row.counts.requests);
        metrics
            .key_errors
            .with_label_values(&labels)
            .inc_by(row.counts.errors);
        metrics
            .key_prompt_tokens
            .with_label_values(&labels)
            .inc_by(row.counts.prompt_tokens);
        metrics
            .key_completion_tokens
            .with_label_values(&labels)
            .inc_by(row.counts.completion_tokens);
    }
    let now = unix_now();
    let midnight = now - now.rem_euclid(86_400);
    for key in state.keys.named() {
        if key.spec.daily_tokens.is_some() {
            let used = store.tokens_since(key.name(), midnight)?;
            key.limiter.seed_today(used, Now::current());
        }
    }
    Ok(())
}

/// Writes the usage counters to the store every `auth.store_flush_secs`, off the async
/// threads (a failed write keeps them for the next).
pub fn keep_flushing(state: &AppState) {
    let store = state.usage.clone();
    let every = Duration::from_secs(state.settings.auth.store_flush_secs.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let store = Arc::clone(&store);
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.flush()).await {
                tracing::warn!(error = %e, "usage store: the counters could not be written; trying again");
            }
        }
    });
}

/// The OpenAPI description of these routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list_keys, create_key, disable_key, enable_key, delete_key, usage),
    components(schemas(KeyInfo, KeyList, NewKey, CreatedKey, DeletedKey, UsageReport, UsageRow, Counts, KeySpec, LiveUse)),
    tags((name = "admin")))]
pub struct KeysApi;
