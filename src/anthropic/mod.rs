//! Anthropic's wire format: the request and response bodies of the Messages API, as serde
//! and utoipa types. Requests are parsed leniently here (loose JSON kept as values) and
//! checked field by field in `crate::validation::anthropic`.

pub mod messages;
