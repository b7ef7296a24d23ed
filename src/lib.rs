//! llamagate: an OpenAI-compatible API gateway for a pool of local quantized
//! Llama-family models. [`build_server`] wires settings, engine, scheduler and the HTTP
//! API into a server bound to a listener (tests bind port 0).

pub mod api;
pub mod config;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod metrics;
pub mod openai;
pub mod scheduler;
pub mod validation;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, Service};
use actix_web::{web, App, HttpServer};
use futures::FutureExt;

use crate::api::AppState;
use crate::config::Settings;
use crate::engine::Engine;
use crate::error::ApiError;
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
    let state = AppState {
        settings: Arc::new(settings),
        scheduler,
        metrics,
        started_at: openai::common::unix_now(),
    };
    let app_state = state.clone();
    let server_settings = state.settings.server.clone();
    let mut http = HttpServer::new(move || {
        let http_metrics = app_state.metrics.clone();
        App::new()
            .app_data(web::Data::new(app_state.clone()))
            .wrap_fn(move |req, srv| {
                let endpoint = req.match_pattern().unwrap_or_else(|| "unmatched".into());
                let counter = http_metrics.http_requests.clone();
                srv.call(req).map(move |res| {
                    let class = match &res {
                        Ok(r) => format!("{}xx", r.status().as_u16() / 100),
                        Err(e) => {
                            format!("{}xx", e.as_response_error().status_code().as_u16() / 100)
                        }
                    };
                    counter
                        .with_label_values(&[endpoint.as_str(), class.as_str()])
                        .inc();
                    res
                })
            })
            .configure(api::configure)
            .default_service(web::to(api::not_found))
    })
    .on_connect(api::disconnect::remember_socket)
    .client_request_timeout(Duration::from_secs(
        server_settings.client_request_timeout_secs.max(1),
    ))
    .shutdown_timeout(30)
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

/// Renders an [`ApiError`] for callers outside the HTTP layer (CLI messages).
pub fn describe(error: &ApiError) -> String {
    error.to_string()
}
