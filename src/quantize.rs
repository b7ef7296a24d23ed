//! `llamagate quantize IN.gguf OUT.gguf --type T`: re-quantizes every tensor of a GGUF
//! with candle's quantized module, keeping every metadata key (tokenizer, chat template)
//! and setting `general.file_type`.
//!
//! Which tensors keep more precision follows llama.cpp's conventions:
//! - 1-D tensors (norms, biases) and tensors added to activations (BERT's position and
//!   token-type embeddings, 2-D norms) stay F32;
//! - the output projection (or, with tied embeddings, `token_embd.weight`) gets Q6_K
//!   for targets below 6 bits (Q8_0 when its rows do not fill 256-wide K blocks);
//! - a K-quant needs rows that are a multiple of 256; other tensors fall back as
//!   llama.cpp does: Q2_K/Q3_K→Q4_0, Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0.
//!
//! The output is written to a temporary file next to the target and renamed at the end,
//! so a failure never leaves a partial file behind.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

/// A target quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    /// 32-bit floats: every weight as the source holds it, dequantized (a full-precision
    /// target for a draft made of the same weights).
    F32,
    /// 16-bit floats.
    F16,
    /// 8.5 bits per weight.
    Q8_0,
    /// 6.56 bits per weight.
    Q6K,
    /// 5.5 bits per weight (K-quant).
    Q5K,
    /// 5.5 bits per weight.
    Q5_0,
    /// 4.5 bits per weight (K-quant).
    Q4K,
    /// 4.5 bits per weight.
    Q4_0,
    /// 5 bits per weight.
    Q4_1,
    /// 3.44 bits per weight (K-quant).
    Q3K,
    /// 2.63 bits per weight (K-quant).
    Q2K,
}

impl std::str::FromStr for QuantType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "q8_0" => Self::Q8_0,
            "q6_k" => Self::Q6K,
            "q5_k" | "q5_k_s" => Self::Q5K,
            "q5_0" => Self::Q5_0,
            "q4_k" | "q4_k_s" => Self::Q4K,
            "q4_0" => Self::Q4_0,
            "q4_1" => Self::Q4_1,
            "q3_k" | "q3_k_s" => Self::Q3K,
            "q2_k" => Self::Q2K,
            other => {
                return Err(format!(
                    "unsupported quantization `{other}`; use one of f32, f16, q8_0, q6_k, q5_k, q5_0, q4_k, q4_0, q4_1, q3_k, q2_k"
                ))
            }
        })
    }
}

impl QuantType {
    /// The GGML type of ordinary weight matrices.
    fn base(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q6K => GgmlDType::Q6K,
            Self::Q5K => GgmlDType::Q5K,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q3K => GgmlDType::Q3K,
            Self::Q2K => GgmlDType::Q2K,
        }
    }

    /// llama.cpp's `general.file_type` value (the `_S` mix for K-quants).
    pub fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
            Self::Q6K => 18,
            Self::Q5K => 16,
            Self::Q5_0 => 8,
            Self::Q4K => 14,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q3K => 11,
            Self::Q2K => 10,
        }
    }

    fn bits_below_6(self) -> bool {
        !matches!(self, Self::F32 | Self::F16 | Self::Q8_0 | Self::Q6K)
    }
}

/// What a quantization did.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    /// Tensors written.
    pub tensors: usize,
    /// Size of the output file.
    pub output_bytes: u64,
    /// Parameters (elements of all tensors).
    pub parameters: u64,
}

impl QuantizeReport {
    /// Average bits per weight of the output file.
    pub fn bits_per_weight(&self) -> f64 {
        self.output_bytes as f64 * 8.0 / self.parameters.max(1) as f64
    }
}

fn fallback(dtype: GgmlDType) -> GgmlDType {
    match dtype {
        GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        other => other,
    }
}

/// The type a tensor gets, by llama.cpp's rules.
fn target_type(name: &str, dims: &[usize], qtype: QuantType, has_output: bool) -> GgmlDType {
    // Added to activations, not multiplied: llama.cpp's kernels need them unquantized
    // (its own quantizer skips them too), as 1-D tensors and 2-D norms.
    const KEEP: &[&str] = &[
        "position_embd.weight",
        "token_types.weight",
        "ffn_gate_inp.weight",
        "ssm_conv1d.weight",
    ];
    if dims.len() < 2 || name.ends_with("_norm.weight") || KEEP.iter().any(|k| name.ends_with(k)) {
        return GgmlDType::F32;
    }
    let row = *dims.last().unwrap_or(&0);
    let is_output = name == "output.weight" || (!has_output && name == "token_embd.weight");
    let wanted = if is_output && qtype.bits_below_6() {
        GgmlDType::Q6K
    } else {
        qtype.base()
    };
    if row.is_multiple_of(wanted.block_size()) {
        wanted
    } else if row.is_multiple_of(fallback(wanted).block_size()) {
        fallback(wanted)
    } else {
        GgmlDType::F16
    }
}

/// Re-quantizes `input` into `output`. `progress(done, total, tensor)` is called per tensor.
pub fn quantize_file(
    input: &Path,
    output: &Path,
    qtype: QuantType,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<QuantizeReport, String> {
    // Our own bounded header check first: the candle reader trusts lengths.
    let summary =
        crate::gguf::read_summary(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let mut reader = BufReader::new(
        File::open(input).map_err(|e| format!("cannot open {}: {e}", input.display()))?,
    );
    let content = gguf_file::Content::read(&mut reader)
        .map_err(|e| format!("{} is not a readable GGUF: {e}", input.display()))?;
    let has_output = content.tensor_infos.contains_key("output.weight");
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    // File order (by offset) keeps the output laid out like the input.
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    let total = names.len();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(total);
    for (i, name) in names.iter().enumerate() {
        progress(i, total, name);
        let qt = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        let dims = qt.shape().dims().to_vec();
        let target = target_type(name, &dims, qtype, has_output);
        let out = if qt.dtype() == target {
            qt
        } else {
            let values = qt
                .dequantize(&Device::Cpu)
                .map_err(|e| format!("tensor `{name}`: {e}"))?;
            QTensor::quantize(&values, target).map_err(|e| format!("tensor `{name}`: {e}"))?
        };
        tensors.push((name.to_string(), out));
    }
    progress(total, total, "");

    let mut metadata: Vec<(String, gguf_file::Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.file_type")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    metadata.push((
        "general.file_type".into(),
        gguf_file::Value::U32(qtype.file_type()),
    ));

    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        ".{}.partial-{}",
        output
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let written = (|| -> Result<(), String> {
        let mut w = BufWriter::new(
            File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?,
        );
        let meta_refs: Vec<(&str, &gguf_file::Value)> =
            metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> =
            tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        gguf_file::write(&mut w, &meta_refs, &tensor_refs)
            .map_err(|e| format!("cannot write {}: {e}", output.display()))?;
        std::io::Write::flush(&mut w).map_err(|e| format!("cannot write: {e}"))?;
        std::fs::rename(&tmp, output)
            .map_err(|e| format!("cannot move the result to {}: {e}", output.display()))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(QuantizeReport {
        tensors: total,
        output_bytes: std::fs::metadata(output).map(|m| m.len()).unwrap_or(0),
        parameters: summary.parameters(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_and_bad_ones_are_named() {
        assert_eq!("Q4_K".parse::<QuantType>().unwrap(), QuantType::Q4K);
        assert_eq!("f32".parse::<QuantType>().unwrap(), QuantType::F32);
        assert_eq!(QuantType::F32.file_type(), 0);
        let err = "q1_x".parse::<QuantType>().unwrap_err();
        assert!(err.contains("q1_x") && err.contains("q8_0"));
    }

    #[test]
    fn llama_cpp_conventions() {
        assert_eq!(
            target_type("blk.0.attn_norm.weight", &[576], QuantType::Q4_0, false),
            GgmlDType::F32
        );
        assert_eq!(
            target_type("blk.0.ffn_down.weight", &[576, 1536], QuantType::Q4K, false),
            GgmlDType::Q4K
        );
        assert_eq!(
            target_type("blk.0.attn_q.weight", &[576, 576], QuantType::Q4K, false),
            GgmlDType::Q5_0
        );
        assert_eq!(
            target_type("token_embd.weight", &[49152, 576], QuantType::Q4_0, false),
            GgmlDType::Q8_0
        );
        assert_eq!(
            target_type("token_embd.weight", &[49152, 576], QuantType::Q4_0, true),
            GgmlDType::Q4_0
        );
        assert_eq!(
            target_type("output.weight", &[32000, 4096], QuantType::Q4_0, true),
            GgmlDType::Q6K
        );
        // F32 keeps every matrix in full precision, the output too.
        assert_eq!(
            target_type("output.weight", &[32000, 4096], QuantType::F32, true),
            GgmlDType::F32
        );
        // BERT's embeddings that are added, not multiplied, stay unquantized.
        for name in ["position_embd.weight", "token_types.weight"] {
            assert_eq!(
                target_type(name, &[512, 384], QuantType::Q8_0, false),
                GgmlDType::F32
            );
        }
    }
}
