//! Models that change while serving, on the real binary and model: the models folder
//! (added, replaced, removed files), `POST`/`DELETE /admin/models`, and configuration
//! reloads (`POST /admin/reload`, SIGHUP), with requests in flight finishing every time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::helpers::{
    get_json, model_path, post_json, serve_binary_with_env, Served, NO_MODELS_DIR,
};

/// A prompt the model continues for as long as it may.
const COUNTING: &str = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,";

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llamagate-models-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn minilm_path() -> PathBuf {
    model_path().with_file_name("all-MiniLM-L6-v2.F16.gguf")
}

/// Links `target` into `dir` as `name` (the folder reads through links).
fn link(dir: &Path, name: &str, target: &Path) {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    std::os::unix::fs::symlink(target, path).unwrap();
}

async fn ids(served: &Served) -> Vec<String> {
    let list = get_json(&served.server.url("/v1/models")).await;
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until `check` holds for the model list (the folder settles, the watcher fires).
async fn until(served: &Served, what: &str, check: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = ids(served).await;
        if check(&now) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: models are {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn chat(served: &Served, model: &str) -> (u16, serde_json::Value) {
    post_json(
        &served.server.url("/v1/chat/completions"),
        &serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    )
    .await
}

/// Starts a long streamed answer and returns the response once its first chunk came.
async fn streaming(served: &Served, model: &str) -> (reqwest::Response, Vec<u8>) {
    let mut res = reqwest::Client::new()
        .post(served.server.url("/v1/completions"))
        .json(
            &serde_json::json!({"model": model, "stream": true, "temperature": 0,
            "prompt": COUNTING, "max_tokens": 96}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let first = res.chunk().await.unwrap().unwrap().to_vec();
    (res, first)
}

/// Reads the rest of a stream and checks it ended properly, with every token.
async fn finishes(res: reqwest::Response, mut body: Vec<u8>) {
    let mut rest = res.bytes_stream();
    while let Some(chunk) = rest.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("data: [DONE]"), "{text}");
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
}

#[tokio::test]
async fn the_models_folder_serves_new_files_and_follows_changes() {
    let dir = scratch();
    link(&dir, "SmolLM2-135M-Instruct.Q4_1.gguf", &model_path());
    let served = serve_binary_with_env(
        "[model_defaults]\ncontext_length = 1024\nengine = \"llama.cpp\"\n",
        &[(NO_MODELS_DIR, dir.as_os_str())],
    )
    .await;
    // There at start, by file stem and short alias, with [model_defaults].
    assert_eq!(ids(&served).await, ["SmolLM2-135M-Instruct.Q4_1"]);
    let m = get_json(&served.server.url("/v1/models/SmolLM2-135M-Instruct.Q4_1")).await;
    assert_eq!(
        m["aliases"],
        serde_json::json!(["smollm2-135m-instruct"]),
        "{m}"
    );
    assert_eq!(m["engine"], "llama.cpp");
    assert_eq!(chat(&served, "smollm2-135m-instruct").await.0, 200);
    let m = get_json(&served.server.url("/v1/models/smollm2-135m-instruct")).await;
    assert_eq!(m["context_length"], 1024, "{m}");
    assert_eq!(m["context_source"], "configured", "{m}");

    // A new file is served without a restart.
    link(&dir, "tiny-chat.gguf", &model_path());
    until(&served, "added", |ids| ids.iter().any(|i| i == "tiny-chat")).await;
    assert_eq!(chat(&served, "tiny-chat").await.0, 200);

    // Removed while it answers: the answer finishes, then the model is gone.
    let (res, first) = streaming(&served, "tiny-chat").await;
    std::fs::remove_file(dir.join("tiny-chat.gguf")).unwrap();
    until(&served, "removed", |ids| {
        !ids.iter().any(|i| i == "tiny-chat")
    })
    .await;
    finishes(res, first).await;
    let (status, body) = chat(&served, "tiny-chat").await;
    assert_eq!(status, 404, "{body}");

    // Replaced by another file under the same name: the new file serves.
    link(&dir, "SmolLM2-135M-Instruct.Q4_1.gguf", &minilm_path());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = get_json(&served.server.url("/v1/models/SmolLM2-135M-Instruct.Q4_1")).await;
        if m["capabilities"]["embeddings"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "not replaced: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = post_json(
        &served.server.url("/v1/embeddings"),
        &serde_json::json!({"model": "SmolLM2-135M-Instruct.Q4_1", "input": "hello"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn admin_adds_and_deletes_models_and_running_requests_finish() {
    let served = crate::helpers::serve_binary(&format!(
        "[[models]]\nname = \"base\"\nsource = \"{}\"\n",
        model_path().display()
    ))
    .await;
    let url = served.server.url("/admin/models");
    let definition = serde_json::json!({"name": "extra", "aliases": ["x"], "source": model_path(), "max_concurrent": 2});
    let (status, body) = post_json(&url, &definition).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"], "extra");
    assert_eq!(chat(&served, "x").await.0, 200);
    // Taken names, bad definitions: refused with the reason, nothing changes.
    let (status, body) = post_json(&url, &definition).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = post_json(
        &url,
        &serde_json::json!({"name": "y", "aliases": ["base"], "source": model_path()}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("base"),
        "{body}"
    );
    let (status, body) = post_json(
        &url,
        &serde_json::json!({"name": "z", "source": model_path(), "max_concurrent": 0}),
    )
    .await;
    crate::helpers::assert_refused(status, &body, 400, "max_concurrent");
    let (status, body) =
        post_json(&url, &serde_json::json!({"name": "z", "sauce": "x.gguf"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post_json(
        &url,
        &serde_json::json!({"name": "z", "source": "/nope/z.gguf"}),
    )
    .await;
    crate::helpers::assert_refused(status, &body, 400, "z.gguf");
    let res = reqwest::Client::new()
        .post(format!("{url}?replace=maybe"))
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["param"], "replace", "{body}");
    assert_eq!(ids(&served).await, ["base", "extra"]);

    // Deleted while it answers: the answer finishes; new requests get 404.
    let (res, first) = streaming(&served, "extra").await;
    let deleted = reqwest::Client::new()
        .delete(served.server.url("/admin/models/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let body: serde_json::Value = deleted.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"id": "extra", "object": "model", "deleted": true})
    );
    assert_eq!(chat(&served, "extra").await.0, 404);
    finishes(res, first).await;
    assert_eq!(ids(&served).await, ["base"]);
    let again = reqwest::Client::new()
        .delete(served.server.url("/admin/models/extra"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    // Its memory is given back once the answer ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let memory = get_json(&served.server.url("/admin/memory")).await;
        let base = get_json(&served.server.url("/v1/models/base")).await;
        if memory[0]["used_bytes"] == base["memory_bytes"] {
            break;
        }
        assert!(Instant::now() < deadline, "{memory} vs {base}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Models of one file. Their queues wait up to 10 minutes: the reload test's eight
/// requests take turns on two slots, and on a busy 2-core CI machine (another test's
/// server decoding beside it) that once took longer than the default 120 s.
fn config(models: &[(&str, usize)]) -> String {
    models
        .iter()
        .map(|(name, max)| {
            format!(
                "[[models]]\nname = \"{name}\"\nsource = \"{}\"\nmax_concurrent = {max}\nqueue_size = 64\nqueue_timeout_secs = 600\n",
                model_path().display()
            )
        })
        .collect()
}

async fn reload(served: &Served) -> (u16, serde_json::Value) {
    post_json(&served.server.url("/admin/reload"), &serde_json::json!({})).await
}

#[tokio::test]
async fn a_reload_applies_the_diff_refuses_bad_files_and_drops_nothing() {
    let served = crate::helpers::serve_binary(&config(&[("a", 2), ("b", 2)])).await;
    assert_eq!(chat(&served, "a").await.0, 200);

    // Under load: eight streams on `a` while `a` changes, `b` goes and `c` comes.
    let mut streams = Vec::new();
    for _ in 0..8 {
        let s = served.server.url("/v1/completions");
        streams.push(tokio::spawn(async move {
            let (status, body) = post_json(
                &s,
                &serde_json::json!({"model": "a", "temperature": 0, "max_tokens": 48, "prompt": COUNTING}),
            )
            .await;
            (status, body)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    served.rewrite_config(&config(&[("a", 3), ("c", 1)]));
    let (status, report) = reload(&served).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["changed"], serde_json::json!(["a"]), "{report}");
    assert_eq!(report["removed"], serde_json::json!(["b"]), "{report}");
    assert_eq!(report["added"], serde_json::json!(["c"]), "{report}");
    assert_eq!(
        report["restart_required"],
        serde_json::json!([]),
        "{report}"
    );
    for s in streams {
        let (status, body) = s.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["completion_tokens"], 48, "{body}");
    }
    assert_eq!(ids(&served).await, ["a", "c"]);
    assert_eq!(chat(&served, "b").await.0, 404);
    assert_eq!(chat(&served, "c").await.0, 200);
    // The same file again: nothing changes.
    let (_, report) = reload(&served).await;
    assert_eq!(
        report["unchanged"],
        serde_json::json!(["a", "c"]),
        "{report}"
    );

    // A broken file is refused with the reason; the running models keep serving.
    served.rewrite_config("[[models]]\nname = \"a\"\nsource = \"x.gguf\"\nmax_concurrent = 0\n");
    let (status, body) = reload(&served).await;
    assert_eq!(body["error"]["code"], "invalid_config", "{body}");
    crate::helpers::assert_refused(status, &body, 400, "max_concurrent");
    served.rewrite_config("[[models]\nname = ");
    assert_eq!(reload(&served).await.0, 400);
    assert_eq!(ids(&served).await, ["a", "c"]);
    assert_eq!(chat(&served, "a").await.0, 200);

    // SIGHUP does the same; a changed [server] section is named as needing a restart.
    served.rewrite_config(&format!("{}[limits]\nmax_n = 2\n", config(&[("d", 1)])));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    until(&served, "reloaded by SIGHUP", |ids| ids == ["d"]).await;
    let (_, report) = reload(&served).await;
    assert_eq!(report["unchanged"], serde_json::json!(["d"]), "{report}");
    assert_eq!(
        report["restart_required"],
        serde_json::json!(["limits"]),
        "{report}"
    );
}
