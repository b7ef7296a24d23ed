//! `llamagate quantize` on the real model: metadata kept, same tensors and shapes,
//! weights close to the source, the result loads and answers; bad input fails cleanly.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;
use serde_json::json;

use crate::helpers::{get_json, model_path, post_json, settings_with, smollm2, spawn_server};

fn quantize(input: &Path, output: &Path, qtype: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llamagate"))
        .arg("quantize")
        .arg(input)
        .arg(output)
        .args(["--type", qtype])
        .output()
        .unwrap()
}

fn read(path: &Path) -> (Content, BufReader<File>) {
    let mut r = BufReader::new(File::open(path).unwrap());
    (Content::read(&mut r).unwrap(), r)
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llamagate-quant-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn same_value(a: &Value, b: &Value) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

async fn round_trip(qtype: &str, file_type: u32, tolerance: f32) {
    let dir = scratch_dir();
    let out = dir.join(format!("smol-{qtype}.gguf"));
    let res = quantize(&model_path(), &out, qtype);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );

    let (src, mut src_r) = read(&model_path());
    let (dst, mut dst_r) = read(&out);
    // Every metadata key is kept (tokenizer, chat template), file type set.
    for (key, value) in &src.metadata {
        if key == "general.file_type" {
            continue;
        }
        let kept = dst
            .metadata
            .get(key)
            .unwrap_or_else(|| panic!("{key} dropped"));
        assert!(same_value(value, kept), "{key} changed");
    }
    assert_eq!(
        dst.metadata["general.file_type"].to_u32().unwrap(),
        file_type
    );
    assert!(dst.metadata.contains_key("tokenizer.chat_template"));
    // Same tensors, same shapes.
    assert_eq!(src.tensor_infos.len(), dst.tensor_infos.len());
    for (name, info) in &src.tensor_infos {
        assert_eq!(info.shape, dst.tensor_infos[name].shape, "{name}");
    }
    // Weights close to the source within the type's tolerance.
    for name in [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.10.ffn_down.weight",
        "output_norm.weight",
    ] {
        let a = src
            .tensor(&mut src_r, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let b = dst
            .tensor(&mut dst_r, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst <= tolerance * scale,
            "{name}: max error {worst} vs scale {scale}"
        );
    }

    // It loads and answers sensibly at temperature 0, in mistral.rs and in llama.cpp.
    let mut m = smollm2("quantized");
    m.source = llamagate::config::ModelSource::File(out.clone());
    let mut on_llama_cpp = m.clone();
    on_llama_cpp.name = "quantized-llama.cpp".into();
    on_llama_cpp.engine = Some(llamagate::config::EngineKind::LlamaCpp);
    let server = spawn_server(settings_with(vec![m, on_llama_cpp]));
    for model in ["quantized", "quantized-llama.cpp"] {
        let (status, body) = post_json(
            &server.url("/v1/chat/completions"),
            &json!({"model": model, "max_tokens": 12, "temperature": 0,
                "messages": [{"role": "user", "content": "What is the capital of France?"}]}),
        )
        .await;
        assert_eq!(status, 200, "{model}: {body}");
        let text = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(text.split_whitespace().count() >= 3, "{model}: {text}");
    }
    let listed: serde_json::Value = get_json(&server.url("/v1/models/quantized")).await;
    assert_eq!(listed["quantization"], qtype.to_uppercase());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn q8_0_round_trip() {
    round_trip("q8_0", 7, 0.02).await;
}

/// F32 holds the source's weights exactly: a full-precision target for its own
/// quantizations as drafts (docs/BENCHMARKS.md, speculative decoding).
#[tokio::test]
async fn f32_round_trip() {
    round_trip("f32", 0, 0.0).await;
}

#[tokio::test]
async fn q4_0_round_trip() {
    round_trip("q4_0", 2, 0.2).await;
}

#[test]
fn bad_input_fails_clearly_and_leaves_no_file() {
    let dir = scratch_dir();
    let not_gguf = dir.join("notes.txt");
    std::fs::write(&not_gguf, b"just some text, certainly not a model").unwrap();
    let out = dir.join("out.gguf");
    let res = quantize(&not_gguf, &out, "q8_0");
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("not a GGUF"));

    let truncated = dir.join("truncated.gguf");
    let bytes = std::fs::read(model_path()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let res = quantize(&truncated, &out, "q4_0");
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("truncated"));

    let res = quantize(&model_path(), &out, "q1_z");
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("unsupported quantization"));

    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "only the two inputs remain: {left:?}");
    let _ = std::fs::remove_dir_all(dir);
}
