//! Starting real servers (real engine, real model) on port 0, and talking to them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use std::time::Instant;

use async_openai::config::OpenAIConfig;
use async_openai::Client;
use futures::StreamExt;
use llamagate::config::{DeviceSetting, EngineKind, ModelSettings, ModelSource, Settings};
use llamagate::engine::router::EngineRouter;

/// Canonical name of the test model (on mistral.rs).
pub const MODEL: &str = "smollm2-135m-instruct";
/// Its alias.
pub const ALIAS: &str = "smollm2";

/// A local engine the API tests run against, and the test model's names on it in the
/// shared servers.
#[derive(Debug, Clone, Copy)]
pub struct Engine {
    /// The engine.
    pub kind: EngineKind,
    /// The model's canonical name.
    pub model: &'static str,
    /// Its alias.
    pub alias: &'static str,
}

/// The test model on mistral.rs.
pub const MISTRALRS: Engine = Engine {
    kind: EngineKind::MistralRs,
    model: MODEL,
    alias: ALIAS,
};

/// The same file on llama.cpp.
pub const LLAMA_CPP: Engine = Engine {
    kind: EngineKind::LlamaCpp,
    model: "smollm2-135m-instruct-llama.cpp",
    alias: "smollm2-llama.cpp",
};

/// Declares each listed `async fn test(engine: Engine)` as one test per local engine, in
/// modules `mistralrs` and `llama_cpp`, so the engines cannot drift apart.
#[macro_export]
macro_rules! per_engine {
    ($($test:ident),* $(,)?) => {
        mod mistralrs {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::helpers::MISTRALRS).await
                }
            )*
        }
        mod llama_cpp {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::helpers::LLAMA_CPP).await
                }
            )*
        }
    };
}

/// The test model on every local engine, pinned, as the shared servers serve it.
fn every_engine() -> Vec<ModelSettings> {
    [MISTRALRS, LLAMA_CPP]
        .into_iter()
        .map(|engine| {
            let mut model = smollm2(engine.model);
            model.engine = Some(engine.kind);
            model.aliases = vec![engine.alias.into()];
            model.pinned = true;
            model
        })
        .collect()
}

/// The SmolLM2 GGUF fetched by scripts/fetch-models.sh.
pub fn model_path() -> PathBuf {
    let path = std::env::var_os("LLAMAGATE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.is_file(),
        "test model {} missing: run scripts/fetch-models.sh",
        path.display()
    );
    path
}

/// The embedding model all-MiniLM-L6-v2 (F16), fetched by `scripts/fetch-models.sh --embeddings`.
pub fn embedding_model_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2.F16.gguf");
    assert!(
        path.is_file(),
        "embedding model {} missing: run scripts/fetch-models.sh --embeddings",
        path.display()
    );
    path
}

/// One entry for the test model.
pub fn smollm2(name: &str) -> ModelSettings {
    let mut m = ModelSettings::new(name, ModelSource::File(model_path()));
    m.device = DeviceSetting::Cpu;
    m
}

/// Settings with the given models, bound to a free loopback port.
pub fn settings_with(models: Vec<ModelSettings>) -> Settings {
    let mut s = Settings::from_toml(
        r#"
[server]
bind = "127.0.0.1:0"
workers = 2

[[models]]
name = "placeholder"
source = "placeholder.gguf"
"#,
    )
    .expect("valid test settings");
    s.models = models;
    // Only the models a test names (not what else lies in models/).
    s.scheduler.models_dir = std::path::PathBuf::new();
    // Usage and run-time keys in memory: every test starts from nothing.
    s.auth.store = Some(std::path::PathBuf::new());
    s.validate().expect("valid test models");
    s
}

/// A running server.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl TestServer {
    /// URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An OpenAI client pointed at this server.
    pub fn openai(&self) -> Client<OpenAIConfig> {
        Client::with_config(
            OpenAIConfig::new()
                .with_api_base(format!("{}/v1", self.base))
                .with_api_key("unused"),
        )
    }

    /// The `/metrics` exposition.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample in `/metrics` (0 when absent).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

/// Starts a server on its own thread and runtime; it lives until the test process ends.
pub fn spawn_server(settings: Settings) -> TestServer {
    spawn_with_engine(settings, Arc::new(EngineRouter::default()))
}

/// Starts a server over `engine` (e.g. the scripted `FakeEngine`) on its own thread.
pub fn spawn_with_engine(
    settings: Settings,
    engine: Arc<dyn llamagate::engine::Engine>,
) -> TestServer {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let built = llamagate::build_server(settings, engine).expect("server builds");
            tx.send(built.addr).unwrap();
            built.server.await.expect("server runs");
        })
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server started");
    TestServer {
        base: format!("http://{addr}"),
    }
}

/// A model entry for the scripted engine (no file behind it).
pub fn fake_model(name: &str) -> ModelSettings {
    let mut m = ModelSettings::new(name, ModelSource::File(format!("{name}.gguf").into()));
    m.device = DeviceSetting::Cpu;
    m
}

/// The server most tests share: SmolLM2 on every local engine ([`MISTRALRS`] as
/// `smollm2-135m-instruct`, alias `smollm2`, and [`LLAMA_CPP`]).
pub fn shared() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| spawn_server(settings_with(every_engine())))
}

/// GETs a URL and parses its JSON body.
pub async fn get_json(url: &str) -> serde_json::Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// POSTs JSON and returns status and body.
pub async fn post_json(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let res = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Asserts OpenAI's error envelope with the given code and param.
pub fn assert_envelope(body: &serde_json::Value, code: Option<&str>, param: Option<&str>) {
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].as_str().is_some(), "{body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
    if let Some(code) = code {
        assert_eq!(e["code"], code, "{body}");
    }
    if let Some(param) = param {
        assert_eq!(e["param"], param, "{body}");
    }
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .collect()
}

/// A second server for tests that compare two answers token for token: they take turns
/// (the guard), because sequences batched with other requests may round differently.
pub async fn quiet() -> (tokio::sync::MutexGuard<'static, ()>, &'static TestServer) {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let guard = TURN.lock().await;
    let server = SERVER.get_or_init(|| spawn_server(settings_with(every_engine())));
    (guard, server)
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `llamagate serve` child process, killed (and its config removed) on drop.
pub struct Served {
    /// The process.
    pub child: Child,
    /// Its address.
    pub server: TestServer,
    config: std::path::PathBuf,
    env: Vec<(String, std::ffi::OsString)>,
    binary: std::path::PathBuf,
}

impl Served {
    /// Replaces the body of its config file (the `[server] bind` line stays), for reloads.
    pub fn rewrite_config(&self, body: &str) {
        let port = self.server.base.rsplit(':').next().unwrap();
        std::fs::write(
            &self.config,
            format!("[server]\nbind = \"127.0.0.1:{port}\"\n{body}"),
        )
        .unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The variable that turns `scheduler.models_dir` off for a spawned server, so that it
/// serves only the models its test configures (not what else lies in models/).
pub const NO_MODELS_DIR: &str = "LLAMAGATE__SCHEDULER__MODELS_DIR";

/// Set to `""`: usage and run-time keys in memory (a test names a file to keep them).
pub const MEMORY_STORE: &str = "LLAMAGATE__AUTH__STORE";

/// Runs the real binary with `[server] bind` on a free port plus `body` as config.
pub async fn serve_binary(body: &str) -> Served {
    serve_binary_with_env(body, &[]).await
}

/// [`serve_binary`] with extra environment variables for the process.
pub async fn serve_binary_with_env(body: &str, env: &[(&str, &std::ffi::OsStr)]) -> Served {
    serve_this_binary(Path::new(env!("CARGO_BIN_EXE_llamagate")), body, env).await
}

/// [`serve_binary_with_env`] with another build of llamagate (the `vulkan` one).
pub async fn serve_this_binary(
    binary: &Path,
    body: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> Served {
    let port = free_port();
    let config = std::env::temp_dir().join(format!("llamagate-rel-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &config,
        format!("[server]\nbind = \"127.0.0.1:{port}\"\n{body}"),
    )
    .unwrap();
    let env: Vec<(String, std::ffi::OsString)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_os_string()))
        .collect();
    let child = spawn_child(binary, &config, port, &env);
    let served = Served {
        child,
        server: TestServer {
            base: format!("http://127.0.0.1:{port}"),
        },
        config,
        env,
        binary: binary.to_path_buf(),
    };
    served.wait_for_health().await;
    served
}

/// Starts `llamagate serve --config CONFIG` (whose bind port is `port`).
fn spawn_child(
    binary: &Path,
    config: &Path,
    port: u16,
    env: &[(String, std::ffi::OsString)],
) -> Child {
    // LLAMAGATE_TEST_LOGS=DIR keeps each server's log there (for a failure's story).
    let (stdout, stderr) = match std::env::var_os("LLAMAGATE_TEST_LOGS") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(Path::new(&dir).join(format!("server-{port}.log")))
                .unwrap();
            (Stdio::from(log.try_clone().unwrap()), Stdio::from(log))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    Command::new(binary)
        .args(["serve", "--config"])
        .arg(config)
        .env(NO_MODELS_DIR, "")
        .env(MEMORY_STORE, "")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap()
}

impl Served {
    /// Waits (up to 30 s) until `/health` answers.
    async fn wait_for_health(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::get(self.server.url("/health")).await.is_err() {
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the process (as a crash would: SIGKILL, no draining).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the process again on the same port with the same config.
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port();
        self.child = spawn_child(&self.binary, &self.config, port, &self.env);
        self.wait_for_health().await;
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.server
            .base
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// POSTs a streamed request and returns the response, asserting 200 and SSE.
async fn post_stream(url: &str, body: &serde_json::Value) -> reqwest::Response {
    let res = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    res
}

/// Asserts an error answer: its status, and that its message mentions `needle`.
pub fn assert_refused(status: u16, body: &serde_json::Value, expected: u16, needle: &str) {
    assert_eq!(status, expected, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "`{needle}` not in {body}");
}

/// POSTs a streamed request and returns its whole SSE body.
pub async fn post_sse(url: &str, body: &serde_json::Value) -> String {
    post_stream(url, body).await.text().await.unwrap()
}

/// Starts a streamed request, reads its first chunks, then goes away (drops the body).
pub async fn stream_then_leave(url: &str, body: &serde_json::Value) {
    let mut chunks = post_stream(url, body).await.bytes_stream();
    for _ in 0..3 {
        chunks.next().await.unwrap().unwrap();
    }
}
