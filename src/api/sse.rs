//! Server-sent events: wraps a stream of ready-made `data: ...\n\n` events into an HTTP
//! response, with keep-alive comments while the stream is quiet, a bounded send buffer
//! and a write timeout for clients that stop reading.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use futures::{Stream, StreamExt};
use serde::Serialize;

use super::disconnect::PeerSocket;
use super::AppState;
use crate::error::ApiError;
use crate::render::Renderer;

/// One `data:` event carrying `value` as JSON.
pub fn data_event<T: Serialize>(value: &T) -> String {
    match serde_json::to_string(value) {
        Ok(json) => format!("data: {json}\n\n"),
        Err(_) => String::new(),
    }
}

/// The terminating event.
pub const DONE_EVENT: &str = "data: [DONE]\n\n";

/// How an API writes its events: OpenAI's `data:` lines ending with `[DONE]`, or
/// Anthropic's named events (`event: <type>`) with no terminator.
pub trait Dialect {
    /// One chunk as an event.
    fn event<T: Serialize>(chunk: &T) -> String;
    /// The event after the last chunk, if any.
    const DONE: Option<&'static str>;
    /// A failure after the stream started, as an event.
    fn error(e: &ApiError) -> String;
}

/// OpenAI's SSE: `data: {json}`, then `data: [DONE]`.
pub struct OpenAiEvents;

impl Dialect for OpenAiEvents {
    fn event<T: Serialize>(chunk: &T) -> String {
        data_event(chunk)
    }
    const DONE: Option<&'static str> = Some(DONE_EVENT);
    fn error(e: &ApiError) -> String {
        e.sse_event()
    }
}

/// Anthropic's SSE: `event: <the chunk's type>` + `data: {json}`; errors as `event: error`.
pub struct AnthropicEvents;

impl Dialect for AnthropicEvents {
    fn event<T: Serialize>(chunk: &T) -> String {
        match serde_json::to_value(chunk) {
            Ok(value) => {
                let name = value["type"].as_str().unwrap_or("message").to_string();
                format!("event: {name}\ndata: {value}\n\n")
            }
            Err(_) => String::new(),
        }
    }
    const DONE: Option<&'static str> = None;
    fn error(e: &ApiError) -> String {
        e.anthropic_sse_event()
    }
}

/// The Responses API's SSE: `event: <the chunk's type>` + `data: {json}`, no terminator;
/// errors as an `error` event `{"type": "error", "code", "message", "param"}`.
pub struct ResponsesEvents;

impl Dialect for ResponsesEvents {
    fn event<T: Serialize>(chunk: &T) -> String {
        AnthropicEvents::event(chunk)
    }
    const DONE: Option<&'static str> = None;
    fn error(e: &ApiError) -> String {
        let envelope = e.envelope().error;
        let body = serde_json::json!({
            "type": "error", "code": envelope.code, "message": envelope.message, "param": envelope.param
        });
        format!("event: error\ndata: {body}\n\n")
    }
}

/// A failure after the stream began: in the renderer's own events where its format has
/// them, else as the dialect's error event.
fn fail<D: Dialect, R: Renderer>(renderer: &mut R, e: &ApiError) -> Vec<String> {
    let envelope = e.envelope().error;
    let code = envelope.code.unwrap_or(envelope.kind);
    let chunks = renderer.fail(code, &envelope.message);
    if chunks.is_empty() {
        vec![D::error(e)]
    } else {
        chunks.iter().map(D::event).collect()
    }
}

/// The streamed answer: `renderer`'s chunks for `events` in dialect `D`, then its
/// terminator once the renderer is complete; a failure becomes an error event, and events
/// that stop early end with one too.
pub fn render_events<D, R>(
    mut renderer: R,
    mut events: impl Stream<Item = Result<R::Input, ApiError>> + Unpin + 'static,
    model: String,
) -> impl Stream<Item = String>
where
    D: Dialect,
    R: Renderer + 'static,
{
    async_stream::stream! {
        for chunk in renderer.start() {
            yield D::event(&chunk);
        }
        while let Some(input) = events.next().await {
            match input {
                Ok(input) => {
                    for chunk in renderer.push(input) {
                        yield D::event(&chunk);
                    }
                    if renderer.complete() {
                        if let Some(done) = D::DONE {
                            yield done.to_string();
                        }
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(model = %model, error = %e, "generation failed mid-stream");
                    for event in fail::<D, R>(&mut renderer, &e) {
                        yield event;
                    }
                    return;
                }
            }
        }
        for event in fail::<D, R>(&mut renderer, &ApiError::Engine("the generation ended early".into())) {
            yield event;
        }
    }
}

/// Events a streamed answer may have waiting for a client that does not read.
const SEND_BUFFER_EVENTS: usize = 32;

/// The most bytes of waiting events joined into one write.
const COALESCE_BYTES: usize = 64 * 1024;

/// `first` and the events already waiting behind it (up to [`COALESCE_BYTES`]) as one
/// piece of the body: when tokens come faster than the client reads, they go out in one
/// write (one chunk of the chunked encoding) instead of one each. Whole events only, in
/// order; with nothing waiting, `first` as it is.
fn coalesce(
    first: actix_web::web::Bytes,
    rx: &mut tokio::sync::mpsc::Receiver<actix_web::web::Bytes>,
) -> actix_web::web::Bytes {
    if rx.is_empty() {
        return first;
    }
    let mut joined = actix_web::web::BytesMut::from(&first[..]);
    while joined.len() < COALESCE_BYTES {
        match rx.try_recv() {
            Ok(next) => joined.extend_from_slice(&next),
            Err(_) => break,
        }
    }
    joined.freeze()
}

/// Aborts the producer of a streamed answer when the answer's body is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An SSE response that sends `events`, plus a keep-alive comment every
/// `server.keep_alive_interval_secs` of silence.
///
/// `events` is driven by a task of its own into a bounded buffer. When the client goes
/// away, everything (and with it `events`, which cancels its generation) is dropped. When
/// the client stays connected but stops reading, the socket and the buffer fill; once the
/// buffer has been full for `server.write_timeout_secs`, `events` is dropped (cancelling
/// the generation), the connection is shut down and `llamagate_client_timeouts_total`
/// counts it.
pub fn sse_response<S, T>(state: &AppState, req: &HttpRequest, events: S) -> HttpResponse
where
    S: Stream<Item = T> + 'static,
    T: Into<actix_web::web::Bytes>,
{
    let server = &state.settings.server;
    let keep_alive = Duration::from_secs(server.keep_alive_interval_secs.max(1));
    let write_timeout = Duration::from_secs(server.write_timeout_secs.max(1));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<actix_web::web::Bytes>(SEND_BUFFER_EVENTS);
    let metrics = state.metrics.clone();
    let socket = req.conn_data::<PeerSocket>().copied();
    // Spawned on this worker's thread: it never runs concurrently with the connection,
    // and is aborted (never polled again) as soon as the body below is dropped, so the
    // socket it may shut down is still this connection's.
    let producer = actix_web::rt::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match tokio::time::timeout(write_timeout, tx.send(event.into())).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(
                        seconds = write_timeout.as_secs(),
                        "client stopped reading a streamed answer: cancelling it"
                    );
                    metrics.client_timeouts.with_label_values(&["write"]).inc();
                    if let Some(socket) = socket {
                        socket.shut_down();
                    }
                    return;
                }
            }
        }
    });
    let guard = AbortOnDrop(producer);
    let req = req.clone();
    let body = async_stream::stream! {
        let _producer = guard;
        let mut ticker = tokio::time::interval(keep_alive);
        ticker.tick().await;
        let gone = super::disconnect::client_gone(&req);
        let mut gone = std::pin::pin!(gone);
        loop {
            tokio::select! {
                _ = &mut gone => break,
                event = rx.recv() => match event {
                    Some(e) => {
                        ticker.reset();
                        yield Ok::<_, actix_web::Error>(coalesce(e, &mut rx));
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::web::Bytes;

    #[test]
    fn waiting_events_go_out_in_one_write_whole_and_in_order() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(SEND_BUFFER_EVENTS);
        // Nothing waiting: the event as it is.
        assert_eq!(
            coalesce(Bytes::from_static(b"data: 1\n\n"), &mut rx),
            "data: 1\n\n"
        );
        tx.try_send(Bytes::from_static(b"data: 2\n\n")).unwrap();
        tx.try_send(Bytes::from_static(b"data: 3\n\n")).unwrap();
        assert_eq!(
            coalesce(Bytes::from_static(b"data: 1\n\n"), &mut rx),
            "data: 1\n\ndata: 2\n\ndata: 3\n\n"
        );
        assert!(rx.is_empty());
        // Bounded: past COALESCE_BYTES the rest waits for the next write.
        tx.try_send(Bytes::from(vec![b'x'; COALESCE_BYTES]))
            .unwrap();
        tx.try_send(Bytes::from_static(b"data: 4\n\n")).unwrap();
        let out = coalesce(Bytes::from_static(b"data: 0\n\n"), &mut rx);
        assert_eq!(out.len(), 9 + COALESCE_BYTES);
        assert_eq!(rx.try_recv().unwrap(), "data: 4\n\n");
    }
}
