//! OpenAI's wire format: the request and response bodies of each resource, as serde and
//! utoipa types. Requests are parsed leniently here (unknown fields are ignored, loose
//! JSON types kept as values) and checked field by field in `crate::validation`.

pub mod chat;
pub mod common;
pub mod completions;
pub mod embeddings;
pub mod models;
pub mod responses;
