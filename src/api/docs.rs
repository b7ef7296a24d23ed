//! `/docs`: Swagger UI over `/openapi.json`, embedded in the binary (no CDN), and the
//! document itself at `/openapi.json`.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

const BUNDLE: &str = include_str!("../../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &str = include_str!("../../assets/swagger-ui/swagger-ui.css");
const PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>llamagate API</title><link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div><script src="/docs/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, persistAuthorization: true});</script>
</body></html>"##;

/// Mounts the viewer and its assets (inside the `/docs` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("", web::get().to(page))
        .route("/", web::get().to(page))
        .route("/swagger-ui-bundle.js", web::get().to(bundle))
        .route("/swagger-ui.css", web::get().to(css));
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

async fn bundle() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/javascript")
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
        .body(BUNDLE)
}

async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css")
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
        .body(CSS)
}
