//! llamagate: an OpenAI-compatible API gateway for a pool of local quantized
//! Llama-family models. [`build_server`] wires settings, engine, scheduler and the HTTP
//! API into a server bound to a listener (tests bind port 0).

pub mod anthropic;
pub mod api;
pub mod auth;
pub mod bench;
pub mod config;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod hub;
pub mod memory;
pub mod metrics;
pub mod openai;
pub mod pull;
#[cfg(feature = "mistralrs")]
pub mod quantize;
pub mod render;
pub mod scheduler;
pub mod usage;
pub mod validation;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::api::AppState;
use crate::config::Settings;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;

/// A server ready to run: await `server` to serve.
pub struct Built {
    /// The actix server future; await it to run until stopped.
    pub server: Server,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its shared state.
    pub state: AppState,
}

/// Binds `settings.server.bind` and builds the server around `engine`.
/// Must be called inside an actix/tokio runtime.
pub fn build_server(settings: Settings, engine: Arc<dyn Engine>) -> anyhow::Result<Built> {
    let listener = TcpListener::bind(&settings.server.bind).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {}: {e}; pick another address with --bind or server.bind",
            settings.server.bind
        )
    })?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new());
    let scheduler = Arc::new(Scheduler::new(&settings, engine, metrics.clone()));
    scheduler.start_background();
    let keys = Arc::new(auth::KeyRing::new(&settings.auth));
    let responses = Arc::new(api::response_store::ResponseStore::new(&settings.responses));
    let usage = Arc::new(open_usage_store(&settings.auth)?);
    let state = AppState {
        keys,
        usage,
        responses,
        pulls: Arc::new(pull::Pulls::default()),
        settings: Arc::new(settings),
        scheduler,
        metrics,
        started_at: openai::common::unix_now(),
    };
    scheduler::folder::watch(state.scheduler.clone(), state.settings.clone());
    api::keys::restore(&state).map_err(|e| anyhow::anyhow!("the usage store: {e}"))?;
    api::keys::keep_flushing(&state);
    #[cfg(unix)]
    {
        let state = state.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                return;
            };
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                if let Err(e) = api::admin::reload(&state).await {
                    tracing::warn!(error = %e, "configuration reload refused");
                }
            }
        });
    }
    let app_state = state.clone();
    let server_settings = state.settings.server.clone();
    warn_if_open(&server_settings.bind, &addr, &state.keys);
    let cors_origins = server_settings.cors_allowed_origins.clone();
    let mut http = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(app_state.clone()))
            .wrap(from_fn(api::middleware::observe))
            .wrap(cors(&cors_origins))
            .configure(api::configure)
            .default_service(web::to(api::not_found))
    })
    .on_connect(api::disconnect::remember_socket)
    .client_request_timeout(Duration::from_secs(
        server_settings.client_request_timeout_secs.max(1),
    ))
    .shutdown_timeout(server_settings.shutdown_grace_secs)
    .listen(listener)?;
    if server_settings.workers > 0 {
        http = http.workers(server_settings.workers);
    }
    Ok(Built {
        server: http.run(),
        addr,
        state,
    })
}

/// The usage store: `auth.store`'s file (a configured one must open), the default file
/// (else memory, with a warning) or memory (`store = ""`).
fn open_usage_store(auth: &config::AuthSettings) -> anyhow::Result<usage::UsageStore> {
    let path = auth.store_path();
    match usage::UsageStore::open(path.as_deref()) {
        Ok(store) => {
            match &path {
                Some(p) => tracing::info!(store = %p.display(), "usage and run-time keys kept in"),
                None => {
                    tracing::info!("usage and run-time keys kept in memory (auth.store = \"\")")
                }
            }
            Ok(store)
        }
        Err(e) if auth.store.is_none() => {
            tracing::warn!(error = %e, "the default usage store cannot be opened: usage and run-time keys are kept in memory; set auth.store");
            usage::UsageStore::open(None).map_err(|e| anyhow::anyhow!(e))
        }
        Err(e) => Err(anyhow::anyhow!("auth.store: {e}")),
    }
}

/// CORS: only the configured origins (none by default; `*` for any).
fn cors(origins: &[String]) -> actix_cors::Cors {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "OPTIONS"])
        .allowed_headers([
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::ACCEPT,
        ])
        .allowed_header("x-request-id")
        .expose_headers(["x-request-id", "retry-after"])
        .max_age(600);
    for origin in origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}

/// A loud warning when the API is reachable from other machines without any key.
fn warn_if_open(bind: &str, addr: &SocketAddr, keys: &auth::KeyRing) {
    if !addr.ip().is_loopback() && !keys.has_api_keys() {
        tracing::warn!(
            "!!! llamagate listens on {bind} (reachable from other machines) WITHOUT API KEYS: \
             anyone on the network can use the models. Set auth.api_keys, LLAMAGATE_API_KEYS \
             or auth.api_keys_file. !!!"
        );
    }
}
