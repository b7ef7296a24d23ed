//! Pure renderers, one per wire format: engine [`TokenEvent`](crate::engine::TokenEvent)s
//! in, the format's streamed chunks out, and the non-streamed answer folded from those
//! same chunks (so a streamed and a non-streamed answer can never disagree). No I/O:
//! every case is a unit test over a scripted event sequence; `api/` only writes the
//! results as JSON or SSE.

pub mod chat;
pub mod completions;
