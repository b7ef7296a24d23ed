//! `GET /`: the built-in chat page, one self-contained file (`assets/ui/index.html`: HTML,
//! CSS and JS inline, no CDN, works offline under the CSP below). It lists the chat models
//! of `/v1/models` with their status, engine and why (embedding models left out; refreshed
//! every 5 s, keeping the selection) and streams answers (`stream_options.include_usage`),
//! rendering markdown progressively (code blocks with a small syntax highlighter and a copy
//! button, tables, lists, links: only http(s) and mailto) through createElement and
//! textContent, so no model output is ever parsed as HTML. Reasoning deltas
//! (`reasoning_content` / `reasoning`) go in a folded block above the answer; under each
//! answer TTFT, tokens (from usage) and tokens/s; server errors, also mid-stream, are shown
//! in the message. Stop (or Esc) aborts the request (the server cancels the generation);
//! Regenerate, Edit-and-resend and Copy act on messages. Conversations stay in the
//! browser's local storage (sidebar: new, switch, rename, export as JSON, delete), each with
//! its settings (system prompt, temperature, top_p, max tokens, seed; empty ones not sent).
//! Responsive (the sidebar folds behind a button under 700px) and usable from the keyboard.
//! When the API needs a key, it asks for one and keeps it in local storage.
//! `tests/browser/chat.mjs` drives it in headless Chromium.

use actix_web::HttpResponse;

const PAGE: &str = include_str!("../../assets/ui/index.html");

/// The page (mounted at `/` by `api::configure`, under the chat page's access rule).
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"))
        .body(PAGE)
}
