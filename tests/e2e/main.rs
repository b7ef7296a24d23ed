//! End-to-end tests: the real server with the real SmolLM2 model through mistral.rs,
//! driven over HTTP by a real OpenAI client (async-openai) and by raw requests.
//! One binary keeps link time down.

// A test crate: failing loudly on the unexpected is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The forwarding test writes a chat request with every field as one `json!`.
#![recursion_limit = "256"]

mod bench;
mod cancel;
mod chat;
mod cli;
mod completions;
mod embeddings;
mod errors;
mod forwarding;
mod helpers;
mod http;
mod keys;
mod lan;
mod messages;
mod models;
mod native_tools;
mod pool;
mod prometheus;
mod pull;
#[cfg(feature = "mistralrs")]
mod quantize;
mod reasoning;
mod reliability;
mod responses;
mod runtime_models;
mod security;
mod speculative;
mod structured;
mod upstream;
mod upstream_pool;
mod vulkan;
