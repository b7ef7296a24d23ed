//! Pure renderers, one per wire format: engine [`TokenEvent`](crate::engine::TokenEvent)s
//! in, the format's streamed chunks out, and the non-streamed answer folded from those
//! same chunks (so a streamed and a non-streamed answer can never disagree). No I/O:
//! every case is a unit test over a scripted event sequence; `api/` only writes the
//! results as JSON or SSE.

pub mod answer;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod messages;
#[cfg(test)]
mod published;
pub mod reasoning;
pub mod responses;
pub mod tool_stream;

/// Events in, a wire format's chunks out.
pub trait Renderer {
    /// What one step consumes (an engine event, maybe tagged with its prompt).
    type Input;
    /// One streamed chunk.
    type Chunk: serde::Serialize;

    /// The chunks sent before any event.
    fn start(&mut self) -> Vec<Self::Chunk>;
    /// The chunks one input becomes.
    fn push(&mut self, input: Self::Input) -> Vec<Self::Chunk>;
    /// Whether the answer is over (every generation ended).
    fn complete(&self) -> bool;
    /// The chunks that report a failure after the answer began (`code`, `message`), for
    /// formats that report it in their own events; none (the default) leaves it to the
    /// transport's error event.
    fn fail(&mut self, code: &str, message: &str) -> Vec<Self::Chunk> {
        let _ = (code, message);
        Vec::new()
    }
}

/// Chunks in, the non-streamed answer out.
pub trait Fold {
    /// The chunk it absorbs.
    type Chunk;
    /// The whole answer.
    type Answer;

    /// Adds one chunk.
    fn absorb(&mut self, chunk: Self::Chunk);
    /// The answer, or `None` when the chunks stopped before it was complete.
    fn finish(self) -> Option<Self::Answer>;
}
