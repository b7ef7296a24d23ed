//! Metrics checked by a real Prometheus (Debian's `prometheus` package, installed by
//! scripts/setup.sh): the shipped scrape config, PromQL over the scraped data, every
//! expression of the shipped Grafana dashboard, and `promtool` on the exposition.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{settings_with, smollm2, spawn_server};

const MODEL: &str = "promo";

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("`{name}` is not installed: run scripts/setup.sh (Debian package `prometheus`)");
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

async fn query(prom: &str, expr: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn scalar(result: &Value) -> Option<f64> {
    result["data"]["result"][0]["value"][1]
        .as_str()?
        .parse()
        .ok()
}

#[test]
fn promtool_accepts_the_shipped_scrape_config() {
    let out = Command::new(tool("promtool"))
        .args(["check", "config"])
        .arg(format!(
            "{}/deploy/prometheus.yml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn a_real_prometheus_scrapes_and_the_dashboard_queries_run() {
    let mut m = smollm2(MODEL);
    m.pinned = true;
    let server = spawn_server(settings_with(vec![m]));
    let gateway = server.base.trim_start_matches("http://").to_string();

    // The shipped scrape config, pointed at this gateway, scraping every second.
    let dir = std::env::temp_dir().join(format!("llamagate-prom-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = repo_file("deploy/prometheus.yml")
        .replace("llamagate:8080", &gateway)
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("scrape_interval: 5s", "scrape_interval: 1s");
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = crate::helpers::free_port();
    let prom = format!("http://127.0.0.1:{port}");
    let _prometheus = KillOnDrop(
        Command::new(tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{prom}/-/ready")).await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "prometheus did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A first scrape (counters at zero) before the traffic, so rate() sees the increase.
    let deadline = Instant::now() + Duration::from_secs(30);
    while scalar(
        &query(
            &prom,
            &format!("llamagate_generated_tokens_total{{model=\"{MODEL}\"}}"),
        )
        .await,
    )
    .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped the gateway"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Traffic: three streamed chat requests.
    let mut generated = 0;
    for i in 0..3 {
        let res = reqwest::Client::new()
            .post(server.url("/v1/chat/completions"))
            .json(&json!({
                "model": MODEL, "stream": true, "stream_options": {"include_usage": true},
                "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": format!("Tell me about the number {i}.")}]
            }))
            .send()
            .await
            .unwrap();
        let text = res.text().await.unwrap();
        let usage = crate::helpers::sse_data(&text)
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find_map(|v| v["usage"]["completion_tokens"].as_u64())
            .unwrap();
        generated += usage;
    }
    // The counter holds exactly the generated tokens.
    let counted = server
        .metric(&format!(
            "llamagate_generated_tokens_total{{model=\"{MODEL}\"}}"
        ))
        .await;
    assert_eq!(counted, generated as f64);

    // Prometheus sees the throughput and one TTFT observation per streamed request.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ttft = scalar(
            &query(
                &prom,
                &format!("llamagate_time_to_first_token_seconds_count{{model=\"{MODEL}\"}}"),
            )
            .await,
        );
        let rate = scalar(
            &query(
                &prom,
                &format!("rate(llamagate_generated_tokens_total{{model=\"{MODEL}\"}}[30s])"),
            )
            .await,
        );
        if ttft == Some(3.0) && rate.is_some_and(|r| r > 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus data: ttft count {ttft:?}, rate {rate:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every expression of the shipped dashboard runs.
    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/grafana/dashboards/llamagate.json")).unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "30s")
                .replace("$model", ".*")
                .replace("$key", ".*");
            let result = query(&prom, &expr).await;
            assert_eq!(result["status"], "success", "{expr}: {result}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} expressions");

    // promtool lints the exposition.
    let exposition = server.metrics_text().await;
    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
