//! The llama.cpp engine on a Vulkan device, for real: the `vulkan` build of llamagate on
//! Mesa's lavapipe (a Vulkan driver that runs on the CPU), with the real model. Its path
//! comes in `LLAMAGATE_VULKAN_BIN` (scripts/test.sh builds it and runs this group on its
//! own, one test at a time: lavapipe is some 50× slower than llama.cpp's CPU kernels).
//! Without that variable these tests say so and pass.
//!
//! Checked: devices are found through ggml (`/v1/models` names lavapipe, `/admin/memory`
//! and the metrics give its memory as the driver reports it); all, some and no layers on
//! the device answer at temperature 0 token for token as the CPU engine does; a budget
//! that holds one model and a half: the second model, while the first is busy, gets the
//! layers that fit and the CPU the rest (reserved on both budgets); once both are idle,
//! loading one evicts the other, and each reloads whole. Two "GPUs" (lavapipe listed
//! twice, `GGML_VK_VISIBLE_DEVICES=0,0`): a model split over both by `devices`, its
//! layers shared out as llama.cpp does and each share reserved on that GPU's budget,
//! answers as the CPU does; `split_mode = "row"` is refused off CUDA.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{get_json, model_path, post_json, serve_this_binary, Served};

/// The `vulkan` build, when the run has one.
fn vulkan_binary() -> Option<PathBuf> {
    let path = std::env::var_os("LLAMAGATE_VULKAN_BIN").map(PathBuf::from);
    if path.is_none() {
        eprintln!("skipped: LLAMAGATE_VULKAN_BIN names no vulkan build (scripts/test.sh sets it)");
    }
    path
}

/// Serves `body` with the vulkan build, lavapipe visible to ggml (it hides CPU-type
/// Vulkan devices unless told).
async fn serve(binary: &std::path::Path, body: &str) -> Served {
    serve_on(binary, body, "0").await
}

/// [`serve`] with `GGML_VK_VISIBLE_DEVICES` = `visible` (`0,0`: lavapipe twice, as two
/// devices).
async fn serve_on(binary: &std::path::Path, body: &str, visible: &str) -> Served {
    serve_this_binary(
        binary,
        body,
        &[("GGML_VK_VISIBLE_DEVICES", std::ffi::OsStr::new(visible))],
    )
    .await
}

/// One model block on the test file: llama.cpp, a small context, one sequence, flash
/// attention on wherever it runs (llama.cpp turns it on for Vulkan; `auto` leaves it off
/// on the CPU alone, and the comparisons are of devices, not of attention kernels).
fn model_block(name: &str, extra: &str) -> String {
    let model = model_path();
    format!(
        r#"
[[models]]
name = "{name}"
source = "{}"
engine = "llama.cpp"
context_length = 512
max_concurrent = 1
threads = 2
flash_attention = "on"
{extra}
"#,
        model.display()
    )
}

/// The greedy answer of `model` to a short question, and its tokens (by logprobs).
async fn greedy(served: &Served, model: &str, max_tokens: u32) -> (String, Vec<String>) {
    let (status, body) = post_json(
        &served.server.url("/v1/chat/completions"),
        &json!({
            "model": model,
            "messages": [{"role": "user", "content": "Name three colors."}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "logprobs": true,
        }),
    )
    .await;
    assert_eq!(status, 200, "{model}: {body}");
    let choice = &body["choices"][0];
    let tokens = choice["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["token"].as_str().unwrap().to_string())
        .collect();
    (
        choice["message"]["content"].as_str().unwrap().into(),
        tokens,
    )
}

/// `/v1/models`' entry for `id`.
async fn model_entry(served: &Served, id: &str) -> Value {
    let list = get_json(&served.server.url("/v1/models")).await;
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} not in {list}"))
}

/// `/admin/memory`'s entry for `device`.
async fn device_memory(served: &Served, device: &str) -> Value {
    let report = get_json(&served.server.url("/admin/memory")).await;
    report
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == device)
        .cloned()
        .unwrap_or_else(|| panic!("{device} not in {report}"))
}

/// The bytes `model` holds on a device, from its `/admin/memory` entry.
fn held(device: &Value, model: &str) -> u64 {
    device["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .map_or(0, |m| m["bytes"].as_u64().unwrap())
}

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn all_some_and_no_layers_on_lavapipe_answer_as_the_cpu_does() {
    let Some(binary) = vulkan_binary() else {
        return;
    };
    let body = [
        model_block("cpu", "device = \"cpu\""),
        model_block("all", "device = \"vulkan:0\""),
        model_block("part", "device = \"vulkan:0\"\ngpu_layers = 12"),
        model_block("none", "device = \"vulkan:0\"\ngpu_layers = 0"),
        model_block("too-many", "device = \"vulkan:0\"\ngpu_layers = 99"),
        model_block("second-gpu", "device = \"vulkan:1\""),
    ]
    .concat();
    let served = serve(&binary, &body).await;

    let (reference, reference_tokens) = greedy(&served, "cpu", 12).await;
    assert!(!reference_tokens.is_empty());
    for (model, layers) in [("all", 31), ("part", 12), ("none", 0)] {
        let (text, tokens) = greedy(&served, model, 12).await;
        assert_eq!(
            (text.as_str(), &tokens),
            (reference.as_str(), &reference_tokens),
            "{model} ({layers} layers on lavapipe) answers as the CPU does"
        );
        let entry = model_entry(&served, model).await;
        let device = entry["device"].as_str().unwrap();
        assert!(
            device.starts_with("vulkan:0 (") && device.contains("llvmpipe"),
            "{entry}"
        );
        assert_eq!(
            (entry["gpu_layers"].as_u64(), entry["layers"].as_u64()),
            (Some(layers), Some(31)),
            "{entry}"
        );
    }

    // More layers than the model has, a device that is not there: refused, saying why.
    let (status, body) = post_json(
        &served.server.url("/v1/chat/completions"),
        &json!({"model": "too-many", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("gpu_layers = 99") && message.contains("31 layers"),
        "{message}"
    );
    let (status, body) = post_json(
        &served.server.url("/v1/chat/completions"),
        &json!({"model": "second-gpu", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("vulkan:1") && message.contains("vulkan:0 ("),
        "{message}"
    );

    // The device's memory as its driver reports it, and who holds what there.
    let gpu = device_memory(&served, "vulkan:0").await;
    assert!(
        gpu["description"].as_str().unwrap().contains("llvmpipe"),
        "{gpu}"
    );
    let total = gpu["total_bytes"].as_u64().unwrap();
    let free = gpu["free_bytes"].as_u64().unwrap();
    assert!(total > 0 && free <= total, "{gpu}");
    let cpu = device_memory(&served, "cpu").await;
    assert!(
        held(&gpu, "all") > 0 && held(&cpu, "all") == 0,
        "{gpu} {cpu}"
    );
    assert!(
        held(&gpu, "part") > 0 && held(&cpu, "part") > 0,
        "{gpu} {cpu}"
    );
    assert!(
        held(&gpu, "none") == 0 && held(&cpu, "none") > 0,
        "{gpu} {cpu}"
    );
    let metrics = served.server.metrics_text().await;
    assert!(
        metrics.contains("llamagate_device_memory_total_bytes{device=\"vulkan:0\"}")
            && metrics.contains("llamagate_device_memory_free_bytes{device=\"vulkan:0\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn two_models_share_a_lavapipe_budget_by_layers_then_take_turns() {
    let Some(binary) = vulkan_binary() else {
        return;
    };
    // A declared size of 310 MiB makes each of the 31 layers 10 MiB: a budget of 450 MiB
    // holds one model and 14 layers of the other.
    let body = format!(
        "[scheduler]\ngpu_memory_budget = \"450MiB\"\n{}{}",
        model_block("a", "device = \"vulkan:0\"\nmemory = \"310MiB\""),
        model_block("b", "device = \"vulkan:0\"\nmemory = \"310MiB\""),
    );
    let served = serve(&binary, &body).await;
    let (whole, _) = greedy(&served, "a", 6).await;
    assert_eq!(model_entry(&served, "a").await["gpu_layers"], 31);

    // `a` busy with a long answer: `b` gets the 14 layers that fit beside it.
    let url = served.server.url("/v1/chat/completions");
    let long = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .timeout(Duration::from_secs(600))
            .json(&json!({
                "model": "a",
                "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": 40,
                "temperature": 0,
            }))
            .send()
            .await
            .unwrap()
            .status()
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (split, _) = greedy(&served, "b", 6).await;
    assert_eq!(split, whole, "14 layers on lavapipe answer as all 31 do");
    let b = model_entry(&served, "b").await;
    assert_eq!(
        (b["gpu_layers"].as_u64(), b["layers"].as_u64()),
        (Some(14), Some(31)),
        "{b}"
    );
    let gpu = device_memory(&served, "vulkan:0").await;
    let cpu = device_memory(&served, "cpu").await;
    assert_eq!(
        (held(&gpu, "a"), held(&gpu, "b")),
        (310 * MIB, 140 * MIB),
        "{gpu}"
    );
    assert_eq!((held(&cpu, "a"), held(&cpu, "b")), (0, 170 * MIB), "{cpu}");
    assert_eq!(gpu["used_bytes"].as_u64(), Some(450 * MIB));
    assert_eq!(long.await.unwrap(), 200);

    // Both idle: `b`, unloaded and asked again, loads whole and evicts `a`; then `a`
    // reloads whole and evicts `b`.
    let client = reqwest::Client::new();
    let res = client
        .post(served.server.url("/admin/models/b/unload"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    greedy(&served, "b", 2).await;
    assert_eq!(model_entry(&served, "a").await["status"], "unloaded");
    assert_eq!(model_entry(&served, "b").await["gpu_layers"], 31);
    let (again, _) = greedy(&served, "a", 6).await;
    assert_eq!(again, whole);
    assert_eq!(model_entry(&served, "b").await["status"], "unloaded");
    assert_eq!(model_entry(&served, "a").await["gpu_layers"], 31);
    let cpu = device_memory(&served, "cpu").await;
    assert_eq!(cpu["used_bytes"].as_u64(), Some(0), "{cpu}");
}

#[tokio::test]
async fn a_model_split_over_two_lavapipe_devices_answers_as_the_cpu_does() {
    let Some(binary) = vulkan_binary() else {
        return;
    };
    // 310 MiB over 31 layers, 10 MiB each; 150 MiB per GPU: llama.cpp shares offloaded
    // layers out by free memory (equal here), so 30 fit (15 + 15), one stays on the CPU.
    let two = "devices = [\"vulkan:0\", \"vulkan:1\"]";
    let body = format!(
        "[scheduler]\ngpu_memory_budget = \"150MiB\"\n{}{}{}",
        model_block("cpu", "device = \"cpu\""),
        model_block("split", &format!("{two}\nmemory = \"310MiB\"")),
        model_block("rows", &format!("{two}\nsplit_mode = \"row\"")),
    );
    let served = serve_on(&binary, &body, "0,0").await;

    let (reference, reference_tokens) = greedy(&served, "cpu", 12).await;
    let (text, tokens) = greedy(&served, "split", 12).await;
    assert_eq!(
        (text.as_str(), &tokens),
        (reference.as_str(), &reference_tokens),
        "split over two devices answers as the CPU does"
    );
    let entry = model_entry(&served, "split").await;
    let device = entry["device"].as_str().unwrap();
    assert!(
        device.starts_with("vulkan:0+vulkan:1 (") && device.contains("llvmpipe"),
        "{entry}"
    );
    assert_eq!(
        (entry["gpu_layers"].as_u64(), entry["layers"].as_u64()),
        (Some(30), Some(31)),
        "{entry}"
    );
    let (first, second, cpu) = (
        device_memory(&served, "vulkan:0").await,
        device_memory(&served, "vulkan:1").await,
        device_memory(&served, "cpu").await,
    );
    assert_eq!(
        (
            held(&first, "split") / MIB,
            held(&second, "split") / MIB,
            held(&cpu, "split") / MIB
        ),
        (150, 150, 10),
        "{first} {second} {cpu}"
    );

    let (status, body) = post_json(
        &served.server.url("/v1/chat/completions"),
        &json!({"model": "rows", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("CUDA GPUs only"), "{message}");
    // Nothing of the refused model is held anywhere.
    assert_eq!(held(&device_memory(&served, "vulkan:1").await, "rows"), 0);
}
