//! `GET /`: the built-in chat page (plain HTML, CSS and JS embedded in the binary; works
//! offline). It lists models from `/v1/models`, streams answers, has a Stop button that
//! aborts the request (the server cancels the generation) and shows TTFT and tokens/s.
//! When the API needs a key, it asks for one and keeps it in the browser's local storage.

use actix_web::HttpResponse;

const PAGE: &str = include_str!("../../assets/ui/index.html");

/// The page (mounted at `/` by `api::configure`, under the chat page's access rule).
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"))
        .body(PAGE)
}
