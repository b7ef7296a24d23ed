//! The scheduler's own failures: what went wrong between routing and the engine, with the
//! numbers a client needs, and no HTTP. The API maps them to its envelopes in one place
//! (`ApiError::from_scheduler`).

use std::time::Duration;

use crate::engine::EngineError;

/// Why a request could not be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SchedulerError {
    /// No configured model has this name or alias.
    #[error("no model `{0}`")]
    ModelNotFound(String),
    /// The model was removed (or replaced) while the request waited for it.
    #[error("model `{0}` was removed")]
    ModelRemoved(String),
    /// The model's queue is full.
    #[error("the queue of model `{model}` is full")]
    QueueFull {
        /// Model name.
        model: String,
        /// Its queue size.
        queue_size: usize,
        /// Suggested wait.
        retry_after: Duration,
    },
    /// The request waited past the model's queue timeout (for a slot, memory or a load).
    #[error("no slot of model `{model}` within {} s", waited.as_secs())]
    QueueTimeout {
        /// Model name.
        model: String,
        /// How long it waited.
        waited: Duration,
        /// Suggested wait.
        retry_after: Duration,
    },
    /// The model could not be loaded (or is in its retry backoff).
    #[error("model `{model}` could not be loaded: {reason}")]
    ModelLoadFailed {
        /// Model name.
        model: String,
        /// The cause, safe to show.
        reason: String,
        /// When the next load attempt will be made.
        retry_after: Duration,
    },
    /// The model cannot fit in its device's budget even with every unpinned model gone.
    #[error("model `{model}` does not fit in the {device} budget")]
    InsufficientMemory {
        /// Model name.
        model: String,
        /// Device key.
        device: String,
        /// Estimated footprint.
        needed: u64,
        /// The device's budget.
        budget: u64,
        /// Bytes held by pinned models.
        pinned: u64,
    },
    /// Prompt plus requested completion does not fit in the context window.
    #[error("{prompt_tokens} + {max_tokens} tokens exceed the context of {context}")]
    ContextLengthExceeded {
        /// The model's context window.
        context: usize,
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Tokens asked for (at least 1).
        max_tokens: usize,
    },
    /// The model does not serve this kind of request (chat to an embedding model, or
    /// embeddings from a chat model).
    #[error("model `{model}` is a {} model", serves.as_str())]
    WrongKind {
        /// Model name.
        model: String,
        /// What it serves.
        serves: crate::config::ModelKind,
    },
    /// A request parameter the model cannot honour (e.g. `dimensions` on a model not
    /// trained for shortened embeddings).
    #[error("{message}")]
    Unsupported {
        /// The parameter.
        param: &'static str,
        /// Why, for a person.
        message: String,
    },
    /// One embedding input is longer than the model takes.
    #[error("input {index} has {tokens} tokens; the model takes {limit}")]
    InputTooLong {
        /// Position of the input in the request.
        index: usize,
        /// Its tokens.
        tokens: usize,
        /// The most the model takes per input.
        limit: usize,
    },
    /// The engine refused one input of several (e.g. a token id outside the vocabulary).
    #[error("input {index}: {error}")]
    InputRejected {
        /// Position of the input in the request.
        index: usize,
        /// Why.
        error: EngineError,
    },
    /// The server is stopping.
    #[error("shutting down")]
    ShuttingDown,
    /// The engine refused or failed.
    #[error("{0}")]
    Engine(EngineError),
}

impl SchedulerError {
    /// The `llamagate_rejected_requests_total` reason, for refusals the scheduler counts.
    pub fn rejection_reason(&self) -> Option<&'static str> {
        match self {
            Self::QueueFull { .. } => Some("queue_full"),
            Self::QueueTimeout { .. } => Some("queue_timeout"),
            Self::ModelLoadFailed { .. } => Some("load_failed"),
            Self::ContextLengthExceeded { .. } | Self::InputTooLong { .. } => {
                Some("context_length")
            }
            _ => None,
        }
    }
}
