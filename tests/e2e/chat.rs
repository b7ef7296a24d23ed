//! Chat completions through the official-format client: plain, streamed, stop, length,
//! determinism, multi-turn, n, logprobs.

use async_openai::types::{
    ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs,
    ChatCompletionStreamOptions, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
    FinishReason, Stop,
};
use futures::StreamExt;
use serde_json::json;

use crate::helpers::{quiet, shared, Engine, TestServer};

fn user(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

fn request(
    engine: Engine,
    messages: Vec<ChatCompletionRequestMessage>,
    max_tokens: u32,
    temperature: f32,
) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(engine.alias)
        .messages(messages)
        .max_completion_tokens(max_tokens)
        .temperature(temperature)
        .build()
        .unwrap()
}

async fn greedy_text(engine: Engine, server: &TestServer, prompt: &str, max_tokens: u32) -> String {
    let res = server
        .openai()
        .chat()
        .create(request(engine, vec![user(prompt)], max_tokens, 0.0))
        .await
        .unwrap();
    res.choices[0].message.content.clone().unwrap()
}

/// Streams a request and returns (text, finish_reason, usage, chunk count).
async fn stream(
    engine: Engine,
    server: &TestServer,
    req: CreateChatCompletionRequest,
) -> (
    String,
    Option<FinishReason>,
    Option<async_openai::types::CompletionUsage>,
    usize,
) {
    let mut s = server.openai().chat().create_stream(req).await.unwrap();
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    let mut chunks = 0;
    let mut saw_role = false;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.unwrap();
        chunks += 1;
        assert_eq!(chunk.model, engine.model);
        if let Some(u) = chunk.usage {
            assert!(chunk.choices.is_empty(), "usage chunk has no choices");
            usage = Some(u);
        }
        for c in chunk.choices {
            if c.delta.role.is_some() {
                saw_role = true;
            }
            if let Some(t) = c.delta.content {
                text.push_str(&t);
            }
            if c.finish_reason.is_some() {
                finish = c.finish_reason;
            }
        }
    }
    assert!(saw_role, "the first chunk carries the role");
    (text, finish, usage, chunks)
}

async fn non_streaming_answer_has_text_usage_and_canonical_model(engine: Engine) {
    let res = shared()
        .openai()
        .chat()
        .create(request(
            engine,
            vec![
                ChatCompletionRequestSystemMessageArgs::default()
                    .content("You are a helpful assistant.")
                    .build()
                    .unwrap()
                    .into(),
                user("Say hello in one short sentence."),
            ],
            24,
            0.0,
        ))
        .await
        .unwrap();
    assert_eq!(res.model, engine.model);
    assert_eq!(res.object, "chat.completion");
    assert!(res.id.starts_with("chatcmpl-"));
    assert_eq!(res.choices.len(), 1);
    let text = res.choices[0].message.content.clone().unwrap();
    assert!(!text.trim().is_empty());
    let usage = res.usage.unwrap();
    assert!(
        usage.prompt_tokens > 10,
        "system + user through the template: {usage:?}"
    );
    assert!(usage.completion_tokens >= 1 && usage.completion_tokens <= 24);
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    assert!(matches!(
        res.choices[0].finish_reason,
        Some(FinishReason::Stop) | Some(FinishReason::Length)
    ));
}

async fn streaming_matches_non_streaming_and_reports_usage(engine: Engine) {
    let (_turn, server) = quiet().await;
    let prompt = "Name three colours.";
    let plain = server
        .openai()
        .chat()
        .create(request(engine, vec![user(prompt)], 20, 0.0))
        .await
        .unwrap();
    let mut req = request(engine, vec![user(prompt)], 20, 0.0);
    req.stream_options = Some(ChatCompletionStreamOptions {
        include_usage: true,
    });
    let (text, finish, usage, chunks) = stream(engine, server, req).await;
    assert_eq!(text, plain.choices[0].message.content.clone().unwrap());
    assert_eq!(finish, plain.choices[0].finish_reason);
    let usage = usage.expect("usage chunk when include_usage");
    let plain_usage = plain.usage.unwrap();
    assert_eq!(usage.prompt_tokens, plain_usage.prompt_tokens);
    assert_eq!(usage.completion_tokens, plain_usage.completion_tokens);
    assert!(chunks >= 3, "role, content and final chunks: {chunks}");
}

async fn streaming_without_include_usage_sends_no_usage(engine: Engine) {
    let (_, finish, usage, _) =
        stream(engine, shared(), request(engine, vec![user("Hi!")], 8, 0.0)).await;
    assert!(usage.is_none());
    assert!(finish.is_some());
}

async fn max_tokens_ends_with_length_and_exact_count(engine: Engine) {
    let res = shared()
        .openai()
        .chat()
        .create(request(
            engine,
            vec![user("Write a long story about a dragon and a knight.")],
            5,
            0.0,
        ))
        .await
        .unwrap();
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::Length));
    assert_eq!(res.usage.unwrap().completion_tokens, 5);
    // The deprecated max_tokens field works the same.
    let mut req = request(
        engine,
        vec![user("Write a long story about a dragon and a knight.")],
        5,
        0.0,
    );
    req.max_completion_tokens = None;
    #[allow(deprecated)]
    {
        req.max_tokens = Some(4);
    }
    let res = shared().openai().chat().create(req).await.unwrap();
    assert_eq!(res.usage.unwrap().completion_tokens, 4);
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::Length));
}

async fn stop_sequence_cuts_text_and_is_not_returned(engine: Engine) {
    let (_turn, server) = quiet().await;
    let prompt = "Write a long story about a dragon and a knight.";
    let full = greedy_text(engine, server, prompt, 40).await;
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(words.len() > 6, "need a longer answer: {full:?}");
    let stop = words[4].to_string();
    let cut = &full[..full.find(&stop).unwrap()];

    let mut req = request(engine, vec![user(prompt)], 40, 0.0);
    req.stop = Some(Stop::StringArray(vec![
        stop.clone(),
        "\u{1F600}never".into(),
    ]));
    let res = server.openai().chat().create(req.clone()).await.unwrap();
    assert_eq!(res.choices[0].message.content.as_deref(), Some(cut));
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::Stop));

    let (streamed, finish, _, _) = stream(engine, server, req).await;
    assert_eq!(streamed, cut, "streamed text stops before {stop:?}");
    assert_eq!(finish, Some(FinishReason::Stop));
}

async fn temperature_zero_and_seed_are_deterministic_and_unseeded_sampling_varies(engine: Engine) {
    let (_turn, server) = quiet().await;
    let prompt = "Invent a name for a cat.";
    assert_eq!(
        greedy_text(engine, server, prompt, 16).await,
        greedy_text(engine, server, prompt, 16).await
    );

    let seeded = || {
        let mut r = request(engine, vec![user(prompt)], 16, 0.9);
        r.seed = Some(1234);
        r
    };
    let a = server.openai().chat().create(seeded()).await.unwrap();
    let b = server.openai().chat().create(seeded()).await.unwrap();
    assert_eq!(a.choices[0].message.content, b.choices[0].message.content);

    let mut texts = std::collections::HashSet::new();
    for _ in 0..4 {
        let r = shared()
            .openai()
            .chat()
            .create(request(engine, vec![user(prompt)], 16, 1.0))
            .await
            .unwrap();
        texts.insert(r.choices[0].message.content.clone().unwrap());
    }
    assert!(texts.len() > 1, "unseeded sampling should vary: {texts:?}");
}

async fn multi_turn_history_is_part_of_the_prompt(engine: Engine) {
    let single = shared()
        .openai()
        .chat()
        .create(request(engine, vec![user("What is my name?")], 8, 0.0))
        .await
        .unwrap();
    let history = vec![
        user("Hello, my name is Ada."),
        ChatCompletionRequestAssistantMessageArgs::default()
            .content("Nice to meet you, Ada!")
            .build()
            .unwrap()
            .into(),
        user("What is my name?"),
    ];
    let multi = shared()
        .openai()
        .chat()
        .create(request(engine, history, 8, 0.0))
        .await
        .unwrap();
    assert!(multi.usage.unwrap().prompt_tokens > single.usage.unwrap().prompt_tokens + 10);
    assert!(!multi.choices[0].message.content.clone().unwrap().is_empty());
}

async fn n_choices_and_logprobs(engine: Engine) {
    let mut req = request(engine, vec![user("Pick a random fruit.")], 6, 1.0);
    req.n = Some(2);
    let res = shared().openai().chat().create(req).await.unwrap();
    assert_eq!(res.choices.len(), 2);
    assert_eq!(res.choices[1].index, 1);

    let mut req = request(engine, vec![user("Say yes.")], 4, 0.0);
    req.logprobs = Some(true);
    req.top_logprobs = Some(2);
    let res = shared().openai().chat().create(req).await.unwrap();
    let lps = res.choices[0].logprobs.clone().expect("logprobs requested");
    let content = lps.content.expect("content logprobs");
    assert!(!content.is_empty());
    for t in &content {
        assert!(t.logprob <= 0.0);
        assert_eq!(t.top_logprobs.len(), 2);
    }
}

async fn array_of_text_parts_is_accepted(engine: Engine) {
    let (status, body) = crate::helpers::post_json(
        &shared().url("/v1/chat/completions"),
        &serde_json::json!({
            "model": engine.model,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi."}]}],
            "max_tokens": 4,
            "temperature": 0,
            "user": "someone"
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(body["choices"][0]["message"].get("refusal").is_some());
}

/// Requests that meet in the engine do not change each other's answers: two chats whose
/// prompts differ by one token (44 and 45), sent together, answer at temperature 0
/// exactly as each does alone. mistral.rs 0.8.1 mixed the second prompt's context into
/// the first sequence when both met in one scheduler step.
async fn concurrent_requests_answer_as_they_do_alone(engine: Engine) {
    let server = shared();
    let ask = |prompt| greedy_text(engine, server, prompt, 24);
    let a = "Give me a small JSON object with a cat's name and age.";
    let b = "Invent a person: name, age, role, tags and address.";
    let (alone_a, alone_b) = (ask(a).await, ask(b).await);
    for round in 0..3 {
        let (together_a, together_b) = tokio::join!(ask(a), ask(b));
        assert_eq!(together_a, alone_a, "round {round}");
        assert_eq!(together_b, alone_b, "round {round}");
    }
}

crate::per_engine!(
    concurrent_requests_answer_as_they_do_alone,
    non_streaming_answer_has_text_usage_and_canonical_model,
    streaming_matches_non_streaming_and_reports_usage,
    streaming_without_include_usage_sends_no_usage,
    max_tokens_ends_with_length_and_exact_count,
    stop_sequence_cuts_text_and_is_not_returned,
    temperature_zero_and_seed_are_deterministic_and_unseeded_sampling_varies,
    multi_turn_history_is_part_of_the_prompt,
    n_choices_and_logprobs,
    array_of_text_parts_is_accepted,
);

/// llama.cpp keeps each sequence's KV cache: the next turn of a conversation reads only
/// what is new, and says so in `usage.prompt_tokens_details.cached_tokens`; the same
/// prompt again reads nothing.
#[tokio::test]
async fn llama_cpp_reuses_the_cached_prefix_of_a_conversation() {
    let (_turn, server) = quiet().await;
    let engine = crate::helpers::LLAMA_CPP;
    let url = server.url("/v1/chat/completions");
    let system =
        json!({"role": "system", "content": "You are a terse assistant who likes geography."});
    let first_question = json!({"role": "user", "content": "Which is the largest ocean on Earth?"});
    let (status, first) = crate::helpers::post_json(
        &url,
        &json!({"model": engine.model, "max_tokens": 12, "temperature": 0,
                "messages": [system, first_question]}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let answer = first["choices"][0]["message"]["content"].clone();
    let first_prompt = first["usage"]["prompt_tokens"].as_u64().unwrap();
    let (status, second) = crate::helpers::post_json(
        &url,
        &json!({"model": engine.model, "max_tokens": 12, "temperature": 0,
                "messages": [system, first_question,
                             {"role": "assistant", "content": answer},
                             {"role": "user", "content": "And the smallest?"}]}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    let usage = &second["usage"];
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= first_prompt - 1 && cached < usage["prompt_tokens"].as_u64().unwrap(),
        "the first turn's prompt is reused: {usage} (first prompt {first_prompt})"
    );
    let counted = server
        .metric(&format!(
            "llamagate_prompt_cached_tokens_total{{model=\"{}\"}}",
            engine.model
        ))
        .await;
    assert!(counted >= cached as f64, "{counted}");

    // The second turn again, word for word: the whole prompt is in the cache, and so
    // are the logits after it, so nothing is read and the answer is the same.
    let second_turn = json!({"model": engine.model, "max_tokens": 12, "temperature": 0,
                "messages": [system, first_question,
                             {"role": "assistant", "content": answer},
                             {"role": "user", "content": "And the smallest?"}]});
    let (status, again) = crate::helpers::post_json(&url, &second_turn).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["choices"][0]["message"]["content"], second["choices"][0]["message"]["content"],
        "{again}"
    );
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"], again["usage"]["prompt_tokens"],
        "{again}"
    );
}
