//! The OpenAPI 3.1 document: each resource's own description merged into one, plus the
//! error envelope and the bearer-key security scheme. Served at `/openapi.json`, printed
//! by `llamagate openapi`, checked in as `openapi/openapi.json`.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The root of the document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "llamagate",
        description = "OpenAI-compatible API gateway for local quantized Llama-family models.",
        license(name = "MIT OR Apache-2.0")
    ),
    components(schemas(crate::error::ErrorEnvelope, crate::error::ErrorBody)),
    modifiers(&BearerKeys),
    security((), ("bearer" = []))
)]
pub struct ApiDoc;

struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "An API key from the server's configuration, when it has any.",
                        ))
                        .build(),
                ),
            );
        }
    }
}

/// The whole document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    for part in [
        super::chat::ChatApi::openapi(),
        super::completions::CompletionsApi::openapi(),
        super::embeddings::EmbeddingsApi::openapi(),
        super::messages::MessagesApi::openapi(),
        super::responses::ResponsesApi::openapi(),
        super::models::ModelsApi::openapi(),
        super::health::HealthApi::openapi(),
        super::metrics::MetricsApi::openapi(),
        super::admin::AdminApi::openapi(),
        super::keys::KeysApi::openapi(),
    ] {
        doc.merge(part);
    }
    doc
}

/// The document as pretty JSON (what `openapi/openapi.json` holds).
pub fn document_json() -> String {
    document()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_string())
        + "\n"
}

/// `GET /openapi.json`.
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document_json())
}
