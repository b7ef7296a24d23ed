//! `POST /v1/completions`: legacy text completions. Each prompt of a list is its own
//! generation, run side by side as the model's sequence slots free up (the scheduler's
//! `start_many`); choice `i` of prompt `p` has index `p * n + i`.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;

use super::disconnect::unless_client_gone;
use super::sse::{data_event, sse_response, DONE_EVENT};
use super::{read_body, AppState};
use crate::engine::{Prompt, TokenEvent, TokenLogprob, TokenUsage};
use crate::error::ApiError;
use crate::openai::common::{new_id, system_fingerprint, unix_now, Usage};
use crate::openai::completions::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse,
};
use crate::scheduler::SchedulerError;
use crate::validation::{parse_json, validate_completion};

/// Mounts `/completions` (inside the `/v1` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/completions")
            .route(web::post().to(create_completion))
            .default_service(web::to(super::only_post)),
    );
}

type Tagged = (usize, Result<TokenEvent, SchedulerError>);

/// Continues a text prompt (no chat template).
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest, tag = "completions",
    responses(
        (status = 200, description = "A completion; with `stream: true` an SSE stream of `CompletionResponse` chunks ending with `data: [DONE]`",
            content((CompletionResponse = "application/json"), (String = "text/event-stream"))),
        (status = 401, body = crate::error::ErrorEnvelope),
        (status = 400, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope),
        (status = 413, body = crate::error::ErrorEnvelope), (status = 429, body = crate::error::ErrorEnvelope),
        (status = 503, body = crate::error::ErrorEnvelope)))]
pub async fn create_completion(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&state, &req, payload).await?;
    let request: CompletionRequest = parse_json(&body)?;
    let valid = validate_completion(request, &state.settings.limits)?;
    let work = async {
        let n = valid.sampling.settings.n;
        let prompts = valid.prompts.iter().cloned().map(Prompt::Text).collect();
        let batch = state
            .scheduler
            .start_many(&valid.model, prompts, valid.sampling.clone())
            .await
            .map_err(|e| ApiError::from_scheduler(e, "prompt"))?;
        let model = batch.model.clone();
        for report in &batch.reports {
            super::middleware::attach_generation(&req, report.clone());
        }
        let merged = batch.events;
        let job = Job {
            id: new_id("cmpl"),
            created: unix_now(),
            model,
            n,
            prompts: valid.prompts.clone(),
            echo: valid.echo,
            logprobs: valid.sampling.settings.logprobs,
        };
        if valid.stream {
            Ok(sse_response(
                &state,
                &req,
                stream_chunks(merged, job, valid.include_usage),
            ))
        } else {
            Ok(HttpResponse::Ok().json(collect(merged, job).await?))
        }
    };
    unless_client_gone(&req, work).await
}

struct Job {
    id: String,
    created: u64,
    model: String,
    n: usize,
    prompts: Vec<String>,
    echo: bool,
    logprobs: bool,
}

impl Job {
    fn response(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> CompletionResponse {
        CompletionResponse {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: system_fingerprint(),
            choices,
            usage,
        }
    }

    fn index(&self, prompt: usize, choice: usize) -> usize {
        prompt * self.n + choice
    }
}

fn legacy_logprobs(lps: &[TokenLogprob], start_offset: usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = start_offset;
    for lp in lps {
        out.tokens.push(lp.token.clone());
        out.token_logprobs.push(lp.logprob);
        out.top_logprobs.push(
            lp.top
                .iter()
                .map(|t| (t.token.clone(), t.logprob))
                .collect::<BTreeMap<_, _>>(),
        );
        out.text_offset.push(offset);
        offset += lp.token.len();
    }
    out
}

fn add_usage(total: &mut TokenUsage, u: TokenUsage) {
    total.prompt_tokens += u.prompt_tokens;
    total.completion_tokens += u.completion_tokens;
}

async fn collect(
    mut merged: impl futures::Stream<Item = Tagged> + Unpin,
    job: Job,
) -> Result<CompletionResponse, ApiError> {
    let total = job.prompts.len() * job.n;
    let mut texts: Vec<String> = (0..total)
        .map(|i| {
            if job.echo {
                job.prompts[i / job.n].clone()
            } else {
                String::new()
            }
        })
        .collect();
    let mut lps: Vec<Vec<TokenLogprob>> = vec![Vec::new(); total];
    let mut reasons = vec!["stop".to_string(); total];
    let mut usage = TokenUsage::default();
    let mut done = 0;
    while let Some((p, event)) = merged.next().await {
        match event.map_err(|e| ApiError::from_scheduler(e, "prompt"))? {
            TokenEvent::Text {
                choice,
                text,
                logprobs,
            } if choice < job.n => {
                let i = job.index(p, choice);
                texts[i].push_str(&text);
                lps[i].extend(logprobs);
            }
            TokenEvent::Finished { choice, reason } if choice < job.n => {
                reasons[job.index(p, choice)] = reason.as_str().into();
            }
            TokenEvent::Done(u) => {
                add_usage(&mut usage, u);
                done += 1;
            }
            _ => {}
        }
    }
    if done < job.prompts.len() {
        return Err(ApiError::Engine("the generation ended early".into()));
    }
    let choices = texts
        .into_iter()
        .zip(lps)
        .zip(reasons)
        .enumerate()
        .map(|(index, ((text, lp), reason))| {
            let echo_len = if job.echo {
                job.prompts[index / job.n].len()
            } else {
                0
            };
            CompletionChoice {
                index,
                text,
                logprobs: job.logprobs.then(|| legacy_logprobs(&lp, echo_len)),
                finish_reason: Some(reason),
            }
        })
        .collect();
    Ok(job.response(choices, Some(usage.into())))
}

fn stream_chunks(
    mut merged: impl futures::Stream<Item = Tagged> + Unpin + 'static,
    job: Job,
    include_usage: bool,
) -> impl futures::Stream<Item = String> {
    async_stream::stream! {
        if job.echo {
            for (p, prompt) in job.prompts.iter().enumerate() {
                for c in 0..job.n {
                    let choice = CompletionChoice { index: job.index(p, c), text: prompt.clone(), logprobs: None, finish_reason: None };
                    yield data_event(&job.response(vec![choice], None));
                }
            }
        }
        let mut offsets = vec![0usize; job.prompts.len() * job.n];
        let mut usage = TokenUsage::default();
        let mut done = 0;
        while let Some((p, event)) = merged.next().await {
            match event {
                Ok(TokenEvent::Text { choice, text, logprobs }) => {
                    let index = job.index(p, choice);
                    let lp = job.logprobs.then(|| legacy_logprobs(&logprobs, offsets.get(index).copied().unwrap_or(0)));
                    if let Some(o) = offsets.get_mut(index) {
                        *o += text.len();
                    }
                    let choice = CompletionChoice { index, text, logprobs: lp, finish_reason: None };
                    yield data_event(&job.response(vec![choice], None));
                }
                Ok(TokenEvent::Finished { choice, reason }) => {
                    let choice = CompletionChoice { index: job.index(p, choice), text: String::new(), logprobs: None, finish_reason: Some(reason.as_str().into()) };
                    yield data_event(&job.response(vec![choice], None));
                }
                Ok(TokenEvent::Done(u)) => {
                    add_usage(&mut usage, u);
                    done += 1;
                    if done == job.prompts.len() {
                        if include_usage {
                            yield data_event(&job.response(Vec::new(), Some(usage.into())));
                        }
                        yield DONE_EVENT.to_string();
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(model = %job.model, error = %e, "generation failed mid-stream");
                    yield ApiError::from_scheduler(e, "prompt").sse_event();
                    return;
                }
            }
        }
        yield ApiError::Engine("the generation ended early".into()).sse_event();
    }
}

/// The OpenAPI description of this resource.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_completion), components(schemas(CompletionRequest, CompletionResponse, CompletionChoice, CompletionLogprobs)), tags((name = "completions")))]
pub struct CompletionsApi;
