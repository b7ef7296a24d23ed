//! `llamagate bench` against a running test server: well-formed CSV, JSON and SVG that
//! agree with the printed table; a clear failure for an unreachable URL.

use std::process::Command;

use serde_json::Value;

use crate::helpers::{model_path, shared, MODEL};

/// Runs a command that must succeed (its stderr is the failure message); returns stdout.
fn run_ok(command: &mut Command) -> String {
    let res = command.output().unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    String::from_utf8_lossy(&res.stdout).into_owned()
}

#[test]
fn a_tiny_benchmark_writes_consistent_reports() {
    let out = std::env::temp_dir().join(format!("llamagate-bench-{}", uuid::Uuid::new_v4()));
    let stdout = run_ok(
        Command::new(env!("CARGO_BIN_EXE_llamagate"))
            .args(["bench", "--url", &shared().url("/v1"), "--model", MODEL])
            .args([
                "--prompt-words",
                "0",
                "--concurrency",
                "1,2",
                "--max-tokens",
                "4",
                "--requests",
                "2",
            ])
            .arg("--out")
            .arg(&out),
    );

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let scenarios = json["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 2);
    assert!(json["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(json["machine"]["server_build"]
        .as_str()
        .unwrap()
        .contains("mistralrs"));

    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for (line, scenario) in lines[1..].iter().zip(scenarios) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), header.len());
        assert_eq!(
            cells[col("concurrency")],
            scenario["concurrency"].to_string()
        );
        let tps: f64 = cells[col("output_tokens_per_s")].parse().unwrap();
        assert!((tps - scenario["output_tokens_per_s"].as_f64().unwrap()).abs() < 0.051);
        assert!(tps > 0.0);
        assert_eq!(cells[col("quantization")], "Q4_1");
        // The printed table carries the same numbers.
        assert!(
            stdout.contains(&format!("| {} |", cells[col("output_tokens_per_s")])),
            "{stdout}"
        );
    }

    let svg = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<polyline") && svg.contains("smollm2-135m-instruct"));
    assert_eq!(svg.matches("<circle").count(), 2);
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let res = Command::new(env!("CARGO_BIN_EXE_llamagate"))
        .args(["bench", "--url", "http://127.0.0.1:9/v1", "--out"])
        .arg(std::env::temp_dir().join("llamagate-bench-unreachable"))
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("cannot reach http://127.0.0.1:9/v1"),
        "{stderr}"
    );
}

/// `llamagate bench --overhead` on one model of `engine`: the report's JSON and table.
fn overhead_report(engine: &str, extra: &[&str]) -> (Value, String) {
    let dir = std::env::temp_dir().join(format!("llamagate-overhead-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nname = \"fast\"\nengine = \"{engine}\"\nsource = \"{}\"\ncontext_length = 1024\n",
            model_path().display()
        ),
    )
    .unwrap();
    let stdout = run_ok(
        Command::new(env!("CARGO_BIN_EXE_llamagate"))
            .args(["bench", "--overhead", "--spawn"])
            .arg(&config)
            .args(["--requests", "2", "--max-tokens", "8", "--out"])
            .arg(&dir)
            .args(extra),
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("overhead.json")).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    (report, stdout)
}

fn assert_measured(report: &Value, path: &str) {
    assert!(
        report[path]["ttft_ms"]["p50"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report[path]["decode_tokens_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

#[test]
fn overhead_mode_compares_in_process_and_http_on_one_model() {
    let (report, stdout) = overhead_report("llama.cpp", &[]);
    assert_eq!(report["model"], "fast");
    assert_eq!(report["engine"], "llama.cpp");
    for path in ["in_process", "http"] {
        assert_measured(&report, path);
        assert_eq!(report[path]["tokens"], 8.0, "{report}");
    }
    // llama.cpp has no path of its own beside the engine's.
    assert!(report["native"].is_null(), "{report}");
    assert!(
        stdout.contains("| in-process |") && stdout.contains("| HTTP (SSE) |"),
        "{stdout}"
    );
    assert!(stdout.contains("HTTP adds"), "{stdout}");
}

/// mistral.rs is also measured alone (its own sampler, straight from its channel), and a
/// sampled run works on every path.
#[test]
fn overhead_mode_measures_mistralrs_against_itself() {
    let (report, stdout) = overhead_report("mistralrs", &["--temperature", "0.5"]);
    assert_eq!(report["engine"], "mistralrs");
    assert_eq!(report["temperature"], 0.5);
    for path in ["in_process", "http", "native"] {
        assert_measured(&report, path);
        assert!(report[path]["tokens"].as_f64().unwrap() >= 2.0, "{report}");
    }
    assert!(
        report["in_process_vs_native_decode"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(stdout.contains("| mistralrs alone |"), "{stdout}");
    assert!(stdout.contains("decodes at"), "{stdout}");
}
