//! Pulling models by reference, against a stand-in for the Hugging Face hub on loopback
//! (scripts/mock-hub.py: the hub's file list and downloads, gated repos, a connection cut
//! mid-file): `llamagate pull` and `POST /admin/models/pull`, on the real model file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{free_port, get_json, model_path, serve_binary_with_env, NO_MODELS_DIR};

const TOKEN: &str = "hf_test_secret";

/// A mock hub over its own repos, killed on drop.
struct Hub {
    child: Child,
    url: String,
    root: PathBuf,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llamagate-{what}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Repos: `test-org/SmolLM2-GGUF` (Q4_1 = the real model, Q8_0 another file),
/// `test-org/gated-GGUF` (needs the token), `test-org/split-GGUF` (two parts),
/// `test-org/slow-GGUF` (the real model, sent slowly).
fn hub(cut_after: u64) -> Hub {
    let root = scratch("hub");
    let repo = |name: &str| {
        let dir = root.join("test-org").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let smol = repo("SmolLM2-GGUF");
    std::os::unix::fs::symlink(model_path(), smol.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    std::os::unix::fs::symlink(
        model_path().with_file_name("all-MiniLM-L6-v2.F16.gguf"),
        smol.join("SmolLM2-135M-Instruct.Q8_0.gguf"),
    )
    .unwrap();
    std::fs::write(smol.join("README.md"), "# SmolLM2\n").unwrap();
    let gated = repo("gated-GGUF");
    std::fs::write(gated.join("secret-Q4_0.gguf"), vec![7u8; 4096]).unwrap();
    let split = repo("split-GGUF");
    std::fs::write(
        split.join("big-Q4_0-00001-of-00002.gguf"),
        vec![1u8; 300_000],
    )
    .unwrap();
    std::fs::write(
        split.join("big-Q4_0-00002-of-00002.gguf"),
        vec![2u8; 200_000],
    )
    .unwrap();
    let slow = repo("slow-GGUF");
    std::os::unix::fs::symlink(model_path(), slow.join("Slow-Q4_1.gguf")).unwrap();
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mock-hub.py");
    let child = Command::new("python3")
        .arg(script)
        .args(["--root"])
        .arg(&root)
        .args([
            "--port",
            &port.to_string(),
            "--gated",
            "test-org/gated-GGUF",
            "--token",
            TOKEN,
        ])
        .args([
            "--cut-after",
            &cut_after.to_string(),
            "--slow-repo",
            "test-org/slow-GGUF",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the mock hub did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Hub { child, url, root }
}

fn pull(hub: &Hub, reference: &str, dir: &Path, token: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llamagate"));
    cmd.args(["pull", reference, "--dir"])
        .arg(dir)
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HOME", dir.join("no-hf-home"))
        .env_remove("HF_TOKEN");
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    cmd.output().unwrap()
}

/// The mock hub's counters (a plain HTTP/1.0 GET: this test is synchronous).
fn stats(hub: &Hub) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(hub.url.trim_start_matches("http://")).unwrap();
    conn.write_all(b"GET /_stats HTTP/1.0\r\nHost: hub\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    serde_json::from_str(body).unwrap()
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn pull_resolves_the_quantization_resumes_cut_downloads_and_checks_them() {
    let hub = hub(1_000_000);
    let dir = scratch("pulled");
    let out = pull(&hub, "hf://test-org/SmolLM2-GGUF:q4_1", &dir, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("`SmolLM2-135M-Instruct.Q4_1`"), "{stdout}");
    let landed = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(same_bytes(&landed, &model_path()));
    let s = stats(&hub);
    assert_eq!(s["cuts"], 1, "{s}");
    assert!(
        s["ranged"].as_u64().unwrap() >= 1,
        "resumed with Range: {s}"
    );
    assert!(!dir
        .join(".SmolLM2-135M-Instruct.Q4_1.gguf.partial")
        .exists());

    // What the repo has, when the quantization is missing or not given.
    let out = pull(&hub, "hf://test-org/SmolLM2-GGUF:Q5_K_M", &dir, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no Q5_K_M") && err.contains("SmolLM2-135M-Instruct.Q8_0"),
        "{err}"
    );
    let out = pull(&hub, "hf.co/test-org/SmolLM2-GGUF", &dir, None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("several GGUF models"));
    let out = pull(&hub, "hf://test-org/nothing-here", &dir, None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    // Gated: refused without the token, fetched with it.
    let out = pull(&hub, "hf://test-org/gated-GGUF", &dir, None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("HF_TOKEN"));
    let out = pull(&hub, "hf://test-org/gated-GGUF", &dir, Some(TOKEN));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(dir.join("secret-Q4_0.gguf")).unwrap(),
        vec![7u8; 4096]
    );

    // Multi-part: every part.
    let out = pull(&hub, "test-org/split-GGUF:q4_0", &dir, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(dir.join("big-Q4_0-00002-of-00002.gguf"))
            .unwrap()
            .len(),
        200_000
    );
    assert_eq!(
        std::fs::read(dir.join("big-Q4_0-00001-of-00002.gguf"))
            .unwrap()
            .len(),
        300_000
    );

    // A partial file from an earlier, interrupted pull is resumed, not fetched again...
    let other = scratch("resumed");
    let whole = std::fs::read(model_path()).unwrap();
    let partial = other.join(".SmolLM2-135M-Instruct.Q4_1.gguf.partial");
    std::fs::write(&partial, &whole[..whole.len() / 2]).unwrap();
    let before = stats(&hub)["ranged"].as_u64().unwrap();
    let out = pull(
        &hub,
        "hf://test-org/SmolLM2-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf",
        &other,
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stats(&hub)["ranged"].as_u64().unwrap() > before);
    assert!(same_bytes(
        &other.join("SmolLM2-135M-Instruct.Q4_1.gguf"),
        &model_path()
    ));
    // ...and a corrupt one fails the sha256 check, is deleted, and the next pull works.
    std::fs::remove_file(other.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    std::fs::write(&partial, vec![0u8; 1000]).unwrap();
    let out = pull(&hub, "hf://test-org/SmolLM2-GGUF:Q4_1", &other, None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sha256"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!partial.exists());
    assert!(!other.join("SmolLM2-135M-Instruct.Q4_1.gguf").exists());
    let out = pull(&hub, "hf://test-org/SmolLM2-GGUF:Q4_1", &other, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(other);
}

#[tokio::test]
async fn the_server_pulls_with_progress_and_then_serves_the_model() {
    let hub = tokio::task::spawn_blocking(|| hub(0)).await.unwrap();
    let dir = scratch("served-pulls");
    let served = serve_binary_with_env(
        "",
        &[
            (NO_MODELS_DIR, dir.as_os_str()),
            ("HF_ENDPOINT", std::ffi::OsStr::new(&hub.url)),
        ],
    )
    .await;
    let url = served.server.url("/admin/models/pull");
    // Refused before anything is downloaded: bad references, missing quantizations.
    let (status, body) =
        crate::helpers::post_json(&url, &serde_json::json!({"model": "hf://nope"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "model");
    let (status, body) = crate::helpers::post_json(
        &url,
        &serde_json::json!({"model": "hf://test-org/SmolLM2-GGUF:IQ1_S"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("Q4_1"),
        "{body}"
    );

    // Streamed progress; /v1/models shows it downloading meanwhile.
    let pull_url = url.clone();
    let events = tokio::spawn(async move {
        crate::helpers::post_sse(
            &pull_url,
            &serde_json::json!({"model": "hf://test-org/slow-GGUF:Q4_1"}),
        )
        .await
    });
    let models = served.server.url("/v1/models");
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let list = get_json(&models).await;
        if let Some(m) = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["status"] == "downloading")
        {
            break m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "never listed as downloading: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen["id"], "Slow-Q4_1", "{seen}");
    assert!(
        seen["downloaded_bytes"].as_u64().unwrap()
            <= seen["download_total_bytes"].as_u64().unwrap()
    );
    let body = events.await.unwrap();
    let statuses: Vec<serde_json::Value> = crate::helpers::sse_data(&body)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(statuses[0]["status"], "downloading", "{body}");
    let last = statuses.last().unwrap();
    assert_eq!(last["status"], "success", "{body}");
    assert_eq!(last["served"], true, "{body}");
    assert_eq!(last["completed"], last["total"], "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"));

    // Served under its file stem; the pull is counted.
    let (status, answer) = crate::helpers::post_json(
        &served.server.url("/v1/chat/completions"),
        &serde_json::json!({"model": "Slow-Q4_1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        served.server.metric("llamagate_pull_bytes_total").await
            >= std::fs::metadata(model_path()).unwrap().len() as f64
    );
    // Unstreamed, and a failure as an error answer.
    let (status, body) = crate::helpers::post_json(
        &url,
        &serde_json::json!({"model": "hf://test-org/gated-GGUF", "stream": false}),
    )
    .await;
    crate::helpers::assert_refused(status, &body, 400, "HF_TOKEN");
    let _ = std::fs::remove_dir_all(dir);
}
