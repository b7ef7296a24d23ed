//! The `llamagate` binary: configuration errors at start-up, `--bind` and environment
//! overrides, and an unreachable Hugging Face hub giving a clear load error.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llamagate::config::{ModelSettings, ModelSource};

use crate::helpers::{free_port, get_json, post_json, settings_with, spawn_server};

fn llamagate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_llamagate"));
    command.env(crate::helpers::NO_MODELS_DIR, "");
    command.env(crate::helpers::MEMORY_STORE, "");
    command
}

fn write_config(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::new(text)
}

/// A tiny temp-file helper (no extra dependency).
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn new(text: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("llamagate-test-{}.toml", uuid::Uuid::new_v4()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn fails_with(config: &str, needle: &str) {
    let file = write_config(config);
    let out = llamagate()
        .args(["serve", "--config"])
        .arg(&file.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
}

const MODEL_ENTRY: &str = "[[models]]\nname = \"a\"\naliases = [\"b\"]\nsource = \"x.gguf\"\n";

#[test]
fn bad_config_fails_at_start_up_with_a_useful_message() {
    let out = llamagate()
        .args(["serve", "--config", "/definitely/missing.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    fails_with(&format!("{MODEL_ENTRY}colour = \"blue\"\n"), "colour");
    fails_with(&format!("[server]\nport = 1\n{MODEL_ENTRY}"), "port");
    fails_with(
        &format!("{MODEL_ENTRY}[[models]]\nname = \"c\"\naliases = [\"b\"]\nsource = \"y.gguf\"\n"),
        "`b` is used by more than one model",
    );
    fails_with(
        &format!("{MODEL_ENTRY}[[models]]\nname = \"a\"\nsource = \"y.gguf\"\n"),
        "`a` is used by more than one model",
    );
    fails_with("[server]\nbind = \"127.0.0.1:1\"\n", "no models configured");
    fails_with(
        &MODEL_ENTRY.replace("x.gguf", "hf://only-owner"),
        "hf://owner/repo/file.gguf",
    );
}

fn wait_for_health(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[tokio::test]
async fn bind_comes_from_cli_then_environment() {
    let file = write_config(&format!("[server]\nbind = \"127.0.0.1:1\"\n{MODEL_ENTRY}"));
    let cli_port = free_port();
    let mut child = llamagate()
        .args(["serve", "--config"])
        .arg(&file.0)
        .args(["--bind", &format!("127.0.0.1:{cli_port}")])
        .env("LLAMAGATE__SERVER__BIND", "127.0.0.1:2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = wait_for_health(cli_port);
    let health = reqwest::get(format!("http://127.0.0.1:{cli_port}/health")).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(up && health.unwrap().status().is_success());

    let env_port = free_port();
    let mut child = llamagate()
        .args(["serve", "--config"])
        .arg(&file.0)
        .env("LLAMAGATE__SERVER__BIND", format!("127.0.0.1:{env_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = wait_for_health(env_port);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(up, "LLAMAGATE__SERVER__BIND was not used");
}

#[tokio::test]
async fn unreachable_hub_and_missing_file_are_clear_load_errors() {
    let mut hub = ModelSettings::new(
        "from-hub",
        ModelSource::parse("hf://nobody-here/no-such-repo/model.Q4_0.gguf").unwrap(),
    );
    hub.load_timeout_secs = 30;
    let missing = ModelSettings::new(
        "missing",
        ModelSource::File("/no/such/dir/model.gguf".into()),
    );
    let server = spawn_server(settings_with(vec![hub, missing]));
    let started = Instant::now();
    let (status, body) = post_json(
        &server.url("/v1/chat/completions"),
        &serde_json::json!({"model": "from-hub", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(40), "no hang");
    assert_eq!(status, 503, "{body}");
    crate::helpers::assert_envelope(&body, Some("model_load_failed"), Some("model"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("from-hub"), "{message}");

    let (status, body) = post_json(
        &server.url("/v1/chat/completions"),
        &serde_json::json!({"model": "missing", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not found") && !message.contains("/no/such/dir"),
        "{message}"
    );

    let list: serde_json::Value = get_json(&server.url("/v1/models")).await;
    assert_eq!(list["data"][0]["status"], "failed");
    assert!(list["data"][1]["error"]
        .as_str()
        .unwrap()
        .contains("not found"));
}
