//! Server-sent events: wraps a stream of ready-made `data: ...\n\n` events into an HTTP
//! response, with keep-alive comments while the stream is quiet.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use futures::{Stream, StreamExt};
use serde::Serialize;

/// One `data:` event carrying `value` as JSON.
pub fn data_event<T: Serialize>(value: &T) -> String {
    match serde_json::to_string(value) {
        Ok(json) => format!("data: {json}\n\n"),
        Err(_) => String::new(),
    }
}

/// The terminating event.
pub const DONE_EVENT: &str = "data: [DONE]\n\n";

/// An SSE response that sends `events`, plus a keep-alive comment every `keep_alive`
/// of silence. When the client goes away the stream (and with it `events`) is dropped.
pub fn sse_response<S>(req: &HttpRequest, events: S, keep_alive: Duration) -> HttpResponse
where
    S: Stream<Item = String> + 'static,
{
    let req = req.clone();
    let body = async_stream::stream! {
        let mut events = std::pin::pin!(events);
        let mut ticker = tokio::time::interval(keep_alive);
        ticker.tick().await;
        let gone = super::disconnect::client_gone(&req);
        let mut gone = std::pin::pin!(gone);
        loop {
            tokio::select! {
                _ = &mut gone => break,
                event = events.next() => match event {
                    Some(e) => {
                        ticker.reset();
                        yield Ok::<_, actix_web::Error>(actix_web::web::Bytes::from(e));
                    }
                    None => break,
                },
                _ = ticker.tick() => yield Ok(actix_web::web::Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    };
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}
