//! Admin endpoints: add or remove a model at run time, load or unload one on demand, see
//! memory use. `POST /admin/models`, `DELETE /admin/models/{id}`,
//! `POST /admin/models/{id}/load`, `POST /admin/models/{id}/unload`, `GET /admin/memory`.
//! They need an admin key; without admin keys configured, only loopback clients may call them.

use actix_web::{web, HttpResponse};
use futures::StreamExt;
use serde::Serialize;
use utoipa::ToSchema;

use super::models::model_object;
use super::AppState;
use crate::error::ApiError;

/// Mounts the admin routes (inside the `/admin` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/models")
            .route(web::post().to(add_model))
            .default_service(web::to(super::only_post)),
    )
    .service(
        web::resource("/models/pull")
            .route(web::post().to(pull_model))
            .default_service(web::to(super::only_post)),
    )
    .service(
        web::resource("/models/{id:.*}/load")
            .route(web::post().to(load_model))
            .default_service(web::to(super::only_post)),
    )
    .service(
        web::resource("/models/{id:.*}/unload")
            .route(web::post().to(unload_model))
            .default_service(web::to(super::only_post)),
    )
    .service(
        web::resource("/models/{id:.*}")
            .route(web::delete().to(delete_model))
            .default_service(web::to(super::only_delete)),
    )
    .service(
        web::resource("/reload")
            .route(web::post().to(reload_config))
            .default_service(web::to(super::only_post)),
    )
    .service(
        web::resource("/memory")
            .route(web::get().to(memory))
            .default_service(web::to(super::only_get)),
    );
}

/// Where to add a model: `?replace=true` replaces a model of the same name.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AddQuery {
    /// Replace the model of the same name (it drains and unloads) instead of refusing.
    #[serde(default)]
    pub replace: bool,
}

/// Adds a model at run time, defined as a `[[models]]` entry of the configuration is
/// (as JSON). It lasts until the server stops or a config reload; the models folder and
/// the configuration file are the ways to keep one.
#[utoipa::path(post, path = "/admin/models", tag = "admin", params(AddQuery),
    request_body(content = Object, description = "A model definition: the fields of a `[[models]]` entry, e.g. {\"name\": \"qwen\", \"source\": \"models/qwen.gguf\"}"),
    responses((status = 201, body = crate::openai::models::ModelObject), (status = 400, body = crate::error::ErrorEnvelope),
        (status = 401, body = crate::error::ErrorEnvelope), (status = 403, body = crate::error::ErrorEnvelope), (status = 409, body = crate::error::ErrorEnvelope)))]
pub async fn add_model(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<AddQuery>::from_query(req.query_string()).map_err(|e| {
        ApiError::InvalidRequest {
            message: format!("bad query: {e}; use ?replace=true or ?replace=false"),
            param: Some("replace".into()),
            code: None,
        }
    })?;
    let settings: crate::config::ModelSettings = crate::validation::parse_json(&body)?;
    settings.validate().map_err(|e| ApiError::InvalidRequest {
        message: e.to_string(),
        param: None,
        code: None,
    })?;
    if let crate::config::ModelSource::File(path) = &settings.source {
        if !tokio::fs::metadata(path).await.is_ok_and(|m| m.is_file()) {
            return Err(ApiError::InvalidRequest {
                message: format!(
                    "`source`: no model file `{}` on the server",
                    settings.source.file_name()
                ),
                param: Some("source".into()),
                code: None,
            });
        }
    }
    let replace = query.replace;
    let scheduler = state.scheduler.clone();
    // Reading the GGUF header is blocking I/O: off the async threads.
    let added = web::block(move || {
        scheduler.add_model(&settings, crate::scheduler::registry::Origin::Api, replace)
    })
    .await
    .map_err(|_| ApiError::Engine("adding the model failed".into()))?
    .map_err(ApiError::Conflict)?;
    Ok(HttpResponse::Created().json(model_object(&state, &added)))
}

/// `POST /admin/models/pull`.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// `hf://owner/repo[:QUANT]`, `hf://owner/repo/file.gguf`, `hf.co/owner/repo:QUANT`
    /// or `owner/repo[:QUANT]`, each optionally `@revision`.
    pub model: String,
    /// Stream progress as server-sent events (default); `false` answers once it ended.
    #[serde(default = "default_true")]
    pub stream: bool,
}

fn default_true() -> bool {
    true
}

/// The state of a pull: each SSE event, and the answer of an unstreamed pull.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PullStatus {
    /// `downloading`, `success` or `error`.
    pub status: &'static str,
    /// The model's name once it is in the models folder (its file stem).
    pub model: String,
    /// What was asked for.
    pub reference: String,
    /// Bytes on disk.
    pub completed: u64,
    /// Bytes in all.
    pub total: u64,
    /// On success: whether the model is served yet (the folder picks it up in a moment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served: Option<bool>,
    /// On error: what failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Pulls a model from the Hugging Face hub (or `HF_ENDPOINT`'s mirror) into the models
/// folder, where it is served under its file stem. The reference is resolved first (a
/// bad, missing or ambiguous one is a 400 naming what the repo has); the download runs on
/// even if the client leaves, resumes an earlier partial one, checks the hub's sha256 and
/// lands atomically. Streamed: `data: {"status": "downloading", ...}` every half second,
/// then `success` or `error`, then `data: [DONE]`.
#[utoipa::path(post, path = "/admin/models/pull", tag = "admin", request_body = PullRequest,
    responses((status = 200, body = PullStatus, description = "The outcome, or an SSE stream of PullStatus events"), (status = 400, body = crate::error::ErrorEnvelope),
        (status = 401, body = crate::error::ErrorEnvelope), (status = 403, body = crate::error::ErrorEnvelope), (status = 502, body = crate::error::ErrorEnvelope)))]
pub async fn pull_model(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let ask: PullRequest = crate::validation::parse_json(&body)?;
    let invalid = |message: String| ApiError::InvalidRequest {
        message,
        param: Some("model".into()),
        code: None,
    };
    let dir = state
        .settings
        .scheduler
        .models_dir()
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| invalid("pulling needs a models folder (scheduler.models_dir)".into()))?;
    let reference = crate::pull::Reference::parse(&ask.model).map_err(invalid)?;
    let files = crate::pull::resolve(&reference).await.map_err(|e| {
        // What the repo has (or lacks) is the client's to fix; an unreachable hub is not.
        if e.hub_failed {
            ApiError::BadGateway(e.message)
        } else {
            invalid(e.message)
        }
    })?;
    let metrics = state.metrics.clone();
    let (model, pull) = state
        .pulls
        .start(&reference, files, dir, move |outcome| match outcome {
            Ok(p) => {
                metrics.pull_bytes.inc_by(p.fetched);
                tracing::info!(model = %p.model, bytes = p.fetched, "pull finished");
            }
            Err(e) => {
                metrics.pull_failures.inc();
                tracing::warn!(error = %e, "pull failed");
            }
        });
    let scheduler = state.scheduler.clone();
    let follow = async_stream::stream! {
        let mut done = pull.done.clone();
        loop {
            let outcome = done.borrow().clone();
            match outcome {
                Some(Ok(pulled)) => {
                    // The folder serves it once it notices the file (a watcher event).
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                    let mut served = false;
                    while std::time::Instant::now() < deadline {
                        if scheduler.registry().resolve(&pulled.model).is_ok() {
                            served = true;
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    yield pull_status(&model, &pull, "success", None, Some(served));
                    break;
                }
                Some(Err(e)) => {
                    yield pull_status(&model, &pull, "error", Some(e.message), None);
                    break;
                }
                None => {
                    yield pull_status(&model, &pull, "downloading", None, None);
                    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), done.changed()).await;
                }
            }
        }
    };
    if ask.stream {
        let events = follow
            .map(|s| super::sse::data_event(&s))
            .chain(futures::stream::once(async {
                super::sse::DONE_EVENT.to_string()
            }));
        return Ok(super::sse::sse_response(&state, &req, events));
    }
    let last = follow.collect::<Vec<_>>().await.pop();
    match last {
        Some(s) if s.status == "success" => Ok(HttpResponse::Ok().json(s)),
        Some(s) => Err(ApiError::BadGateway(
            s.error.unwrap_or_else(|| "the pull failed".into()),
        )),
        None => Err(ApiError::BadGateway("the pull failed".into())),
    }
}

fn pull_status(
    model: &str,
    pull: &crate::pull::ActivePull,
    status: &'static str,
    error: Option<String>,
    served: Option<bool>,
) -> PullStatus {
    use std::sync::atomic::Ordering;
    PullStatus {
        status,
        model: model.to_string(),
        reference: pull.reference.clone(),
        completed: pull.progress.done.load(Ordering::Relaxed),
        total: pull.progress.total.load(Ordering::Relaxed),
        served,
        error,
    }
}

/// What `DELETE /admin/models/{id}` did.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedModel {
    /// The model's name.
    pub id: String,
    /// `model`.
    pub object: String,
    /// Always true.
    pub deleted: bool,
}

/// Removes a model: it takes no new requests at once; running ones finish, then it
/// unloads. Works for models of the configuration, the models folder or this API (until
/// a reload or a rescan brings a configured or folder model back).
#[utoipa::path(delete, path = "/admin/models/{id}", tag = "admin", params(("id" = String, Path, description = "Model name or alias")),
    responses((status = 200, body = DeletedModel), (status = 401, body = crate::error::ErrorEnvelope),
        (status = 403, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope)))]
pub async fn delete_model(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let slot = state.scheduler.registry().resolve(&id)?;
    let name = slot.settings.name.clone();
    state
        .scheduler
        .remove_model(&name)
        .ok_or_else(|| ApiError::ModelNotFound(id.into_inner()))?;
    Ok(HttpResponse::Ok().json(DeletedModel {
        id: name,
        object: "model".into(),
        deleted: true,
    }))
}

/// What a configuration reload did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadReport {
    /// Models added.
    pub added: Vec<String>,
    /// Models whose definition changed: the old one drains, the new one serves.
    pub changed: Vec<String>,
    /// Models removed (they drain: running requests finish).
    pub removed: Vec<String>,
    /// Models left as they were.
    pub unchanged: Vec<String>,
    /// Models that could not be placed, with why (a name or alias taken).
    pub failed: Vec<FailedModel>,
    /// Sections that changed but apply only at the next start (`server`, `limits`,
    /// `auth`, `responses`, `scheduler`, `model_defaults`).
    pub restart_required: Vec<String>,
}

/// A model a reload could not place.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailedModel {
    /// Its name.
    pub id: String,
    /// Why.
    pub reason: String,
}

/// Reads the configuration file again and applies its models (the way SIGHUP does). A
/// file that does not load or validate changes nothing.
pub async fn reload(state: &AppState) -> Result<ReloadReport, String> {
    let Some((file, overrides)) = state.settings.loaded_from.clone() else {
        return Err("this server was not started from a configuration file".into());
    };
    let new = web::block(move || crate::config::Settings::load(&file, &overrides))
        .await
        .map_err(|_| "reading the configuration failed".to_string())?
        .map_err(|e| format!("the configuration was refused, nothing changed: {e}"))?;
    let old = &state.settings;
    // Settings hold no floats or maps with unstable order: equal Debug text is equal.
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let restart_required: Vec<String> = [
        ("server", differs(&old.server, &new.server)),
        ("limits", differs(&old.limits, &new.limits)),
        ("auth", differs(&old.auth, &new.auth)),
        ("responses", differs(&old.responses, &new.responses)),
        ("scheduler", differs(&old.scheduler, &new.scheduler)),
        (
            "model_defaults",
            differs(&old.model_defaults, &new.model_defaults),
        ),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(section, _)| section.to_string())
    .collect();
    let scheduler = state.scheduler.clone();
    let changes = web::block(move || scheduler.apply_config_models(&new.models))
        .await
        .map_err(|_| "applying the configuration failed".to_string())?;
    let report = ReloadReport {
        added: changes.added,
        changed: changes.changed,
        removed: changes.removed,
        unchanged: changes.unchanged,
        failed: changes
            .failed
            .into_iter()
            .map(|(id, reason)| FailedModel { id, reason })
            .collect(),
        restart_required,
    };
    tracing::info!(added = ?report.added, changed = ?report.changed, removed = ?report.removed, failed = report.failed.len(), restart_required = ?report.restart_required, "configuration reloaded");
    Ok(report)
}

/// Reloads the configuration file: added models appear, removed ones drain, changed ones
/// drain and reload; requests in flight finish. A bad file is refused with the reason
/// and the running configuration keeps serving. SIGHUP does the same.
#[utoipa::path(post, path = "/admin/reload", tag = "admin",
    responses((status = 200, body = ReloadReport), (status = 400, body = crate::error::ErrorEnvelope),
        (status = 401, body = crate::error::ErrorEnvelope), (status = 403, body = crate::error::ErrorEnvelope)))]
pub async fn reload_config(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let report = reload(&state)
        .await
        .map_err(|message| ApiError::InvalidRequest {
            message,
            param: None,
            code: Some("invalid_config"),
        })?;
    Ok(HttpResponse::Ok().json(report))
}

/// Loads a model now and waits until it is ready.
#[utoipa::path(post, path = "/admin/models/{id}/load", tag = "admin", params(("id" = String, Path, description = "Model name or alias")),
    responses((status = 200, body = crate::openai::models::ModelObject), (status = 401, body = crate::error::ErrorEnvelope),
        (status = 403, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope), (status = 503, body = crate::error::ErrorEnvelope)))]
pub async fn load_model(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let slot = state.scheduler.registry().resolve(&id)?;
    state.scheduler.pool().load_now(slot.index).await?;
    Ok(HttpResponse::Ok().json(model_object(&state, &slot)))
}

/// Unloads a model: at once when idle, after its running requests otherwise.
#[utoipa::path(post, path = "/admin/models/{id}/unload", tag = "admin", params(("id" = String, Path, description = "Model name or alias")),
    responses((status = 200, body = crate::openai::models::ModelObject), (status = 401, body = crate::error::ErrorEnvelope),
        (status = 403, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope)))]
pub async fn unload_model(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let slot = state.scheduler.registry().resolve(&id)?;
    state.scheduler.pool().unload_now(slot.index);
    Ok(HttpResponse::Ok().json(model_object(&state, &slot)))
}

/// Memory budget and use of one device.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceMemoryReport {
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    /// Bytes models may use.
    pub budget_bytes: u64,
    /// Bytes reserved by loaded models.
    pub used_bytes: u64,
    /// For a GPU: what its driver calls it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// For a GPU: its total memory, as its driver reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// For a GPU: its free memory now, as its driver reports it (every process counted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// The models holding some of it (one split between a GPU and the CPU is on both).
    pub models: Vec<ModelMemoryReport>,
}

/// What one model holds on one device.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelMemoryReport {
    /// The model's name.
    pub model: String,
    /// Bytes reserved for it there.
    pub bytes: u64,
}

/// Memory budgets and use.
#[utoipa::path(get, path = "/admin/memory", tag = "admin", responses((status = 200, body = Vec<DeviceMemoryReport>), (status = 401, body = crate::error::ErrorEnvelope), (status = 403, body = crate::error::ErrorEnvelope)))]
pub async fn memory(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // Asking the GPUs' drivers for their memory may block: off the async threads.
    let scheduler = state.scheduler.clone();
    let usage = web::block(move || scheduler.pool().device_usage())
        .await
        .unwrap_or_default();
    let report: Vec<DeviceMemoryReport> = state
        .scheduler
        .pool()
        .memory()
        .into_iter()
        .map(|d| {
            let gpu = usage.iter().find(|u| u.device == d.device);
            DeviceMemoryReport {
                description: gpu.map(|u| u.description.clone()),
                total_bytes: gpu.map(|u| u.total),
                free_bytes: gpu.map(|u| u.free),
                models: d
                    .models
                    .into_iter()
                    .map(|(model, bytes)| ModelMemoryReport { model, bytes })
                    .collect(),
                device: d.device,
                budget_bytes: d.budget,
                used_bytes: d.used,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(report))
}

/// The OpenAPI description of this resource.
#[derive(utoipa::OpenApi)]
#[openapi(paths(add_model, pull_model, delete_model, reload_config, load_model, unload_model, memory), components(schemas(DeviceMemoryReport, ModelMemoryReport, DeletedModel, ReloadReport, FailedModel, PullRequest, PullStatus)), tags((name = "admin")))]
pub struct AdminApi;
