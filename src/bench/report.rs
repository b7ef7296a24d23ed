//! Benchmark reports: a markdown table, CSV, JSON and an SVG chart of output tokens/s by
//! model (quantization) and concurrency.

use std::fmt::Write as _;

use super::{BenchReport, ScenarioResult};

const COLUMNS: &[&str] = &[
    "model",
    "quantization",
    "size_mb",
    "bits_per_weight",
    "prompt_tokens",
    "concurrency",
    "requests",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "ttft_p99_ms",
    "tpot_p50_ms",
    "tpot_p95_ms",
    "tpot_p99_ms",
    "itl_p50_ms",
    "itl_p95_ms",
    "itl_p99_ms",
    "e2e_p50_ms",
    "e2e_p95_ms",
    "e2e_p99_ms",
    "requests_per_s",
    "output_tokens_per_s",
    "prompt_tokens_per_s",
];

fn row(s: &ScenarioResult) -> Vec<String> {
    let f1 = |x: f64| format!("{x:.1}");
    let f2 = |x: f64| format!("{x:.2}");
    vec![
        s.model.clone(),
        s.quantization.clone().unwrap_or_default(),
        s.size_bytes.map(|b| f1(b as f64 / 1e6)).unwrap_or_default(),
        s.bits_per_weight.map(f2).unwrap_or_default(),
        f1(s.prompt_tokens),
        s.concurrency.to_string(),
        s.requests.to_string(),
        f1(s.ttft_ms.p50),
        f1(s.ttft_ms.p95),
        f1(s.ttft_ms.p99),
        f1(s.tpot_ms.p50),
        f1(s.tpot_ms.p95),
        f1(s.tpot_ms.p99),
        f1(s.itl_ms.p50),
        f1(s.itl_ms.p95),
        f1(s.itl_ms.p99),
        f1(s.e2e_ms.p50),
        f1(s.e2e_ms.p95),
        f1(s.e2e_ms.p99),
        f2(s.request_throughput),
        f1(s.output_tokens_per_s),
        f1(s.prompt_tokens_per_s),
    ]
}

/// A markdown table (with the machine and build first).
pub fn markdown(report: &BenchReport) -> String {
    let m = &report.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {}, {} cores, {:.0} GiB RAM{}. Server: {} {}. Client: {} ({}). {} tokens per request{}.\n",
        m.cpu,
        m.cores,
        m.ram_gib,
        if m.gpus.is_empty() { String::new() } else { format!(", GPUs: {}", m.gpus.join("; ")) },
        report.base_url,
        m.server_build.clone().unwrap_or_default(),
        m.client,
        m.client_features,
        report.max_tokens,
        if report.repeated_prompt {
            "; one prompt repeated per scenario (prefix-cache hits)"
        } else {
            ""
        }
    );
    let headers = [
        "model",
        "quant",
        "MB",
        "bpw",
        "prompt (tokens)",
        "conc",
        "TTFT p50/p95/p99 ms",
        "TPOT p50/p95/p99 ms",
        "ITL p50/p95/p99 ms",
        "e2e p50/p95/p99 ms",
        "req/s",
        "out tok/s",
        "prompt tok/s",
    ];
    let _ = writeln!(out, "| {} |", headers.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(headers.len()));
    for s in &report.scenarios {
        let mut r = row(s);
        // Servers that send no usage (llama-cpp-python) leave the prompt's size unknown.
        let words = if s.prompt_words == 0 {
            "short".to_string()
        } else {
            format!("{} words", s.prompt_words)
        };
        let unknown = s.prompt_tokens == 0.0;
        r[4] = if unknown {
            format!("{words} (n/a)")
        } else {
            format!("{words} ({})", r[4])
        };
        if unknown {
            r[21] = "n/a".into();
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {}/{}/{} | {}/{}/{} | {}/{}/{} | {}/{}/{} | {} | {} | {} |",
            r[0], r[1], r[2], r[3], r[4], r[5], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
            r[14], r[15], r[16], r[17], r[18], r[19], r[20], r[21]
        );
    }
    out
}

/// CSV with one row per scenario.
pub fn csv(report: &BenchReport) -> String {
    let mut out = COLUMNS.join(",") + "\n";
    for s in &report.scenarios {
        let cells: Vec<String> = row(s)
            .into_iter()
            .map(|c| {
                if c.contains([',', '"', '\n']) {
                    format!("\"{}\"", c.replace('"', "\"\""))
                } else {
                    c
                }
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// The report as pretty JSON.
pub fn json(report: &BenchReport) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|_| "{}".into())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG line chart: output tokens/s (y) by concurrency (x), one line per model and
/// prompt length.
pub fn svg(report: &BenchReport) -> String {
    let (w, h, left, right, top, bottom) = (820.0, 480.0, 70.0, 230.0, 40.0, 50.0);
    let mut levels: Vec<usize> = report.scenarios.iter().map(|s| s.concurrency).collect();
    levels.sort_unstable();
    levels.dedup();
    let max_y = report
        .scenarios
        .iter()
        .map(|s| s.output_tokens_per_s)
        .fold(1.0f64, f64::max)
        * 1.1;
    let x_of = |c: usize| {
        let i = levels.iter().position(|l| *l == c).unwrap_or(0) as f64;
        left + i * (w - left - right) / (levels.len().max(2) - 1) as f64
    };
    let y_of = |v: f64| top + (h - top - bottom) * (1.0 - v / max_y);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">Output tokens/s by concurrency</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
"#,
        (w - right + left) / 2.0,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for i in 0..=5 {
        let v = max_y * i as f64 / 5.0;
        let y = y_of(v);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
            w - right,
            left - 6.0,
            y + 4.0
        );
    }
    for c in &levels {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{c}</text>"#,
            x_of(*c),
            h - bottom + 18.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">concurrent requests</text>"#,
        (w - right + left) / 2.0,
        h - 12.0
    );
    let colours = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
        "#7f7f7f", "#bcbd22",
    ];
    let mut series: Vec<(String, Vec<&ScenarioResult>)> = Vec::new();
    for s in &report.scenarios {
        let key = format!("{}|{}", s.model, s.prompt_words);
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, points)) => points.push(s),
            None => series.push((key, vec![s])),
        }
    }
    for (i, (_, points)) in series.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let path: Vec<String> = points
            .iter()
            .map(|s| {
                format!(
                    "{:.1},{:.1}",
                    x_of(s.concurrency),
                    y_of(s.output_tokens_per_s)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for s in points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                x_of(s.concurrency),
                y_of(s.output_tokens_per_s)
            );
        }
        let first = points[0];
        let label = format!(
            "{}{} · {:.0} prompt tok",
            first.model,
            first
                .quantization
                .as_deref()
                .map(|q| format!(" {q}"))
                .unwrap_or_default(),
            first.prompt_tokens
        );
        let ly = top + 16.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{:.1}" width="10" height="10" fill="{colour}"/><text x="{}" y="{:.1}">{}</text>"#,
            w - right + 12.0,
            ly,
            w - right + 28.0,
            ly + 9.0,
            escape(&label)
        );
    }
    out.push_str("</svg>\n");
    out
}
