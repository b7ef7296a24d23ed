//! A careful reader of GGUF headers. Every length in the header is checked against the
//! file's size before anything is allocated, so a corrupt or hostile file gives an error
//! instead of a huge allocation (the engine's own reader trusts those lengths). The
//! summary feeds the memory estimate, `/v1/models` (quantization, size) and the checks
//! run before a file is handed to an engine (truncation, architecture).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// What went wrong reading a GGUF file, for a person.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct GgufError(pub String);

/// A scalar or string metadata value (arrays are skipped, only their length is kept).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any integer type.
    Int(i128),
    /// f32 or f64.
    Float(f64),
    /// bool.
    Bool(bool),
    /// string.
    Str(String),
    /// An array and its length.
    Array(u64),
}

impl MetaValue {
    /// The value as an unsigned integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Self::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Tensor name.
    pub name: String,
    /// GGML type id.
    pub ggml_type: u32,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub bytes: u64,
}

/// The parts of a GGUF header llamagate uses.
#[derive(Debug, Clone)]
pub struct GgufSummary {
    /// Format version (2 or 3).
    pub version: u32,
    /// Scalar metadata (arrays recorded with their length only).
    pub metadata: HashMap<String, MetaValue>,
    /// Tensor entries in file order.
    pub tensors: Vec<TensorEntry>,
    /// Where tensor data starts.
    pub data_offset: u64,
    /// Size of the file.
    pub file_size: u64,
}

/// Block size and bytes per block of each GGML type id.
pub fn ggml_type_layout(id: u32) -> Option<(u64, u64)> {
    Some(match id {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        16 => (256, 66),  // IQ2_XXS
        17 => (256, 74),  // IQ2_XS
        18 => (256, 98),  // IQ3_XXS
        19 => (256, 50),  // IQ1_S
        20 => (32, 18),   // IQ4_NL
        21 => (256, 110), // IQ3_S
        22 => (256, 82),  // IQ2_S
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        29 => (256, 56),  // IQ1_M
        30 => (1, 2),     // BF16
        _ => return None,
    })
}

/// The name llama.cpp gives a `general.file_type` value.
pub fn file_type_name(file_type: u64) -> &'static str {
    match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => "unknown",
    }
}

struct Reader<R> {
    inner: R,
    pos: u64,
    size: u64,
}

impl<R: Read> Reader<R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, GgufError> {
        if n > self.size.saturating_sub(self.pos) {
            return Err(GgufError(format!(
                "corrupt header: {what} of {n} bytes runs past the end of the file"
            )));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| GgufError(format!("cannot read {what}: {e}")))?;
        self.pos += n;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let b = self.bytes(len, what)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), GgufError> {
        if n > self.size.saturating_sub(self.pos) {
            return Err(GgufError(format!(
                "corrupt header: {what} runs past the end of the file"
            )));
        }
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|e| GgufError(format!("cannot read {what}: {e}")))?;
        if copied != n {
            return Err(GgufError(format!("file ends inside {what}")));
        }
        self.pos += n;
        Ok(())
    }

    fn scalar_size(t: u32) -> Option<u64> {
        Some(match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            _ => return None,
        })
    }

    fn scalar(&mut self, t: u32, what: &str) -> Result<MetaValue, GgufError> {
        let size = Self::scalar_size(t).ok_or_else(|| {
            GgufError(format!("corrupt header: unknown value type {t} in {what}"))
        })?;
        let b = self.bytes(size, what)?;
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(&b);
        let raw = u64::from_le_bytes(a);
        Ok(match t {
            0 => MetaValue::Int(i128::from(b[0])),
            1 => MetaValue::Int(i128::from(b[0] as i8)),
            2 => MetaValue::Int(i128::from(raw as u16)),
            3 => MetaValue::Int(i128::from(raw as u16 as i16)),
            4 => MetaValue::Int(i128::from(raw as u32)),
            5 => MetaValue::Int(i128::from(raw as u32 as i32)),
            6 => MetaValue::Float(f64::from(f32::from_bits(raw as u32))),
            7 => MetaValue::Bool(b[0] != 0),
            10 => MetaValue::Int(i128::from(raw)),
            11 => MetaValue::Int(i128::from(raw as i64)),
            _ => MetaValue::Float(f64::from_bits(raw)),
        })
    }

    fn value(&mut self, t: u32, what: &str) -> Result<MetaValue, GgufError> {
        match t {
            8 => Ok(MetaValue::Str(self.string(what)?)),
            9 => {
                let item = self.u32(what)?;
                let len = self.u64(what)?;
                match item {
                    8 => {
                        for _ in 0..len {
                            let l = self.u64(what)?;
                            self.skip(l, what)?;
                        }
                    }
                    9 => {
                        return Err(GgufError(format!(
                            "corrupt header: nested arrays in {what}"
                        )))
                    }
                    t => {
                        let size = Self::scalar_size(t).ok_or_else(|| {
                            GgufError(format!("corrupt header: unknown array type {t} in {what}"))
                        })?;
                        self.skip(len.saturating_mul(size), what)?;
                    }
                }
                Ok(MetaValue::Array(len))
            }
            t => self.scalar(t, what),
        }
    }
}

/// Reads and checks the header of a GGUF file: structure, tensor types, that every
/// tensor's data lies inside the file (not truncated).
pub fn read_summary(path: &Path) -> Result<GgufSummary, GgufError> {
    let file = File::open(path).map_err(|e| GgufError(format!("cannot open: {e}")))?;
    let size = file
        .metadata()
        .map_err(|e| GgufError(format!("cannot stat: {e}")))?
        .len();
    let mut r = Reader {
        inner: BufReader::new(file),
        pos: 0,
        size,
    };
    let magic = r
        .bytes(4, "magic")
        .map_err(|_| GgufError("not a GGUF file (too short)".into()))?;
    if magic != b"GGUF" {
        return Err(GgufError("not a GGUF file (bad magic bytes)".into()));
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError(format!("unsupported GGUF version {version}")));
    }
    let tensor_count = r.u64("tensor count")?;
    let kv_count = r.u64("metadata count")?;
    // Each entry needs at least 12 (kv) / 24 (tensor) bytes: bound counts by file size.
    if kv_count > size / 12 || tensor_count > size / 24 {
        return Err(GgufError("corrupt header: impossible entry counts".into()));
    }
    let mut metadata = HashMap::new();
    for i in 0..kv_count {
        let key = r.string(&format!("metadata key #{i}"))?;
        let t = r.u32(&key)?;
        let value = r.value(t, &key)?;
        metadata.insert(key, value);
    }
    let mut tensors = Vec::with_capacity(tensor_count as usize);
    for i in 0..tensor_count {
        let name = r.string(&format!("tensor name #{i}"))?;
        let n_dims = r.u32(&name)?;
        if n_dims == 0 || n_dims > 8 {
            return Err(GgufError(format!(
                "corrupt header: tensor `{name}` has {n_dims} dimensions"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&name)?);
        }
        let ggml_type = r.u32(&name)?;
        let offset = r.u64(&name)?;
        let (block, type_size) = ggml_type_layout(ggml_type)
            .ok_or_else(|| GgufError(format!("tensor `{name}` has unknown type {ggml_type}")))?;
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .ok_or_else(|| {
                GgufError(format!(
                    "corrupt header: tensor `{name}` is impossibly large"
                ))
            })?;
        if elements % block != 0 {
            return Err(GgufError(format!(
                "corrupt header: tensor `{name}` does not fill whole blocks"
            )));
        }
        tensors.push(TensorEntry {
            name,
            ggml_type,
            dims,
            offset,
            bytes: elements / block * type_size,
        });
    }
    let alignment = metadata
        .get("general.alignment")
        .and_then(MetaValue::as_u64)
        .filter(|a| *a > 0 && *a <= 1 << 20)
        .unwrap_or(32);
    let data_offset = r.pos.div_ceil(alignment) * alignment;
    for t in &tensors {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.bytes))
            .ok_or_else(|| GgufError(format!("corrupt header: tensor `{}` offset", t.name)))?;
        if end > size {
            return Err(GgufError(format!(
                "the file is truncated: tensor `{}` needs bytes up to {end}, the file has {size}",
                t.name
            )));
        }
    }
    let _ = r.inner.seek(SeekFrom::Start(0));
    Ok(GgufSummary {
        version,
        metadata,
        tensors,
        data_offset,
        file_size: size,
    })
}

impl GgufSummary {
    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.metadata
            .get("general.architecture")
            .and_then(MetaValue::as_str)
    }

    /// An architecture-scoped integer, e.g. `block_count` → `llama.block_count`.
    pub fn arch_u64(&self, key: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.metadata
            .get(&format!("{arch}.{key}"))
            .and_then(MetaValue::as_u64)
    }

    /// Bytes of tensor data.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    /// Parameters (elements of all tensors).
    pub fn parameters(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.dims.iter().product::<u64>())
            .sum()
    }

    /// The quantization, from `general.file_type` (or the most common tensor type).
    pub fn quantization(&self) -> String {
        if let Some(ft) = self
            .metadata
            .get("general.file_type")
            .and_then(MetaValue::as_u64)
        {
            let name = file_type_name(ft);
            if name != "unknown" {
                return name.to_string();
            }
        }
        "unknown".into()
    }

    /// Vocabulary size (`{arch}.vocab_size` or the length of `tokenizer.ggml.tokens`).
    pub fn vocab_size(&self) -> Option<u64> {
        self.arch_u64("vocab_size")
            .or_else(|| match self.metadata.get("tokenizer.ggml.tokens") {
                Some(MetaValue::Array(n)) => Some(*n),
                _ => None,
            })
    }

    /// Context window the model was trained for.
    pub fn context_length(&self) -> Option<u64> {
        self.arch_u64("context_length")
    }

    /// Bytes of KV cache per token of context for one sequence, with `bytes_per_value`
    /// per element: 2 (K and V) × layers × KV heads × head dimension.
    pub fn kv_bytes_per_token(&self, bytes_per_value: u64) -> Option<u64> {
        let layers = self.arch_u64("block_count")?;
        let heads = self.arch_u64("attention.head_count")?.max(1);
        let kv_heads = self.arch_u64("attention.head_count_kv").unwrap_or(heads);
        let head_dim = self
            .arch_u64("attention.key_length")
            .or_else(|| Some(self.arch_u64("embedding_length")? / heads))?;
        Some(2 * layers * kv_heads * head_dim * bytes_per_value)
    }
}

#[cfg(test)]
mod tests {
    use super::geometry::{header, string_value};
    use super::*;
    use std::io::Write;

    fn write_temp(bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("llamagate-gguf-{}.gguf", uuid::Uuid::new_v4()));
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    #[test]
    fn reads_a_small_header_and_detects_truncation() {
        let mut b = header(
            &[
                ("general.architecture", 8, string_value("llama")),
                ("llama.block_count", 4, 2u32.to_le_bytes().to_vec()),
            ],
            &[("w", 0, vec![4, 2])],
        );
        let aligned = b.len().div_ceil(32) * 32;
        b.resize(aligned, 0);
        let truncated = write_temp(&b);
        let err = read_summary(&truncated).unwrap_err();
        assert!(err.0.contains("truncated"), "{err}");
        b.extend(vec![0u8; 32]);
        let ok = write_temp(&b);
        let s = read_summary(&ok).unwrap();
        assert_eq!(s.architecture(), Some("llama"));
        assert_eq!(s.arch_u64("block_count"), Some(2));
        assert_eq!(s.tensor_bytes(), 32);
        let _ = std::fs::remove_file(truncated);
        let _ = std::fs::remove_file(ok);
    }

    #[test]
    fn huge_lengths_are_errors_not_allocations() {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes()); // key length
        let p = write_temp(&b);
        assert!(read_summary(&p).unwrap_err().0.contains("corrupt header"));
        let _ = std::fs::remove_file(p);
        let p = write_temp(b"NOPE1234");
        assert!(read_summary(&p).unwrap_err().0.contains("not a GGUF"));
        let _ = std::fs::remove_file(p);
    }
}

/// Header-only GGUF files of real model geometries, for tests of memory decisions: the
/// header names every tensor of the architecture with its real shape and type, and the
/// file is extended (sparsely, taking no disk) to the size the tensors need.
#[cfg(test)]
pub(crate) mod geometry {
    use std::io::Write;
    use std::path::Path;

    /// The shape of a decoder model.
    #[derive(Debug, Clone, Copy)]
    pub struct Geometry {
        /// `general.architecture`.
        pub arch: &'static str,
        /// Transformer blocks.
        pub layers: u64,
        /// Hidden size.
        pub embedding: u64,
        /// Attention heads.
        pub heads: u64,
        /// Key/value heads (grouped-query attention).
        pub kv_heads: u64,
        /// Feed-forward size.
        pub feed_forward: u64,
        /// Vocabulary.
        pub vocab: u64,
        /// Trained context.
        pub context: u64,
        /// The output projection is the token embedding (no `output.weight`).
        pub tied: bool,
    }

    /// Llama 3.1 8B.
    pub const LLAMA_3_1_8B: Geometry = Geometry {
        arch: "llama",
        layers: 32,
        embedding: 4096,
        heads: 32,
        kv_heads: 8,
        feed_forward: 14336,
        vocab: 128_256,
        context: 131_072,
        tied: false,
    };
    /// Llama 3.2 1B.
    pub const LLAMA_3_2_1B: Geometry = Geometry {
        arch: "llama",
        layers: 16,
        embedding: 2048,
        heads: 32,
        kv_heads: 8,
        feed_forward: 8192,
        vocab: 128_256,
        context: 131_072,
        tied: true,
    };
    /// Llama 3.2 3B.
    pub const LLAMA_3_2_3B: Geometry = Geometry {
        arch: "llama",
        layers: 28,
        embedding: 3072,
        heads: 24,
        kv_heads: 8,
        feed_forward: 8192,
        vocab: 128_256,
        context: 131_072,
        tied: true,
    };
    /// Qwen 2.5 7B.
    pub const QWEN_2_5_7B: Geometry = Geometry {
        arch: "qwen2",
        layers: 28,
        embedding: 3584,
        heads: 28,
        kv_heads: 4,
        feed_forward: 18944,
        vocab: 152_064,
        context: 32_768,
        tied: false,
    };

    const Q4_K: u32 = 12;
    const F32: u32 = 0;

    /// A GGUF v3 header: metadata `(key, type, value bytes)` and tensors `(name, type,
    /// dims)` whose data follows packed in order.
    pub fn header(kv: &[(&str, u32, Vec<u8>)], tensors: &[(&str, u32, Vec<u64>)]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((kv.len() as u64).to_le_bytes());
        for (k, t, v) in kv {
            b.extend((k.len() as u64).to_le_bytes());
            b.extend(k.as_bytes());
            b.extend(t.to_le_bytes());
            b.extend(v);
        }
        let mut offset = 0u64;
        for (name, t, dims) in tensors {
            b.extend((name.len() as u64).to_le_bytes());
            b.extend(name.as_bytes());
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(t.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offset += data_bytes(*t, dims);
        }
        b
    }

    /// Bytes of a tensor's data.
    pub fn data_bytes(ggml_type: u32, dims: &[u64]) -> u64 {
        let (block, size) = super::ggml_type_layout(ggml_type).unwrap();
        dims.iter().product::<u64>() / block * size
    }

    /// A GGUF string value.
    pub fn string_value(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend(s.as_bytes());
        v
    }

    /// Writes `g` as a Q4_K_M-like GGUF at `path` (header only, sparse data).
    pub fn write(path: &Path, g: &Geometry) {
        let head_dim = g.embedding / g.heads;
        let kv = g.kv_heads * head_dim;
        let mut tensors: Vec<(String, u32, Vec<u64>)> = vec![
            ("token_embd.weight".into(), Q4_K, vec![g.embedding, g.vocab]),
            ("output_norm.weight".into(), F32, vec![g.embedding]),
        ];
        if !g.tied {
            tensors.push(("output.weight".into(), Q4_K, vec![g.embedding, g.vocab]));
        }
        for l in 0..g.layers {
            let t = |n: &str| format!("blk.{l}.{n}.weight");
            tensors.extend([
                (t("attn_norm"), F32, vec![g.embedding]),
                (t("attn_q"), Q4_K, vec![g.embedding, g.embedding]),
                (t("attn_k"), Q4_K, vec![g.embedding, kv]),
                (t("attn_v"), Q4_K, vec![g.embedding, kv]),
                (t("attn_output"), Q4_K, vec![g.embedding, g.embedding]),
                (t("ffn_norm"), F32, vec![g.embedding]),
                (t("ffn_gate"), Q4_K, vec![g.embedding, g.feed_forward]),
                (t("ffn_up"), Q4_K, vec![g.embedding, g.feed_forward]),
                (t("ffn_down"), Q4_K, vec![g.feed_forward, g.embedding]),
            ]);
        }
        let a = g.arch;
        let mut kv: Vec<(String, u32, Vec<u8>)> = vec![
            ("general.architecture".into(), 8, string_value(a)),
            // Q4_K_M
            ("general.file_type".into(), 4, 15u32.to_le_bytes().to_vec()),
        ];
        for (k, v) in [
            ("block_count", g.layers),
            ("embedding_length", g.embedding),
            ("attention.head_count", g.heads),
            ("attention.head_count_kv", g.kv_heads),
            ("feed_forward_length", g.feed_forward),
            ("context_length", g.context),
            ("vocab_size", g.vocab),
        ] {
            kv.push((format!("{a}.{k}"), 4, (v as u32).to_le_bytes().to_vec()));
        }
        let kv: Vec<(&str, u32, Vec<u8>)> = kv
            .iter()
            .map(|(k, t, v)| (k.as_str(), *t, v.clone()))
            .collect();
        let tensors: Vec<(&str, u32, Vec<u64>)> = tensors
            .iter()
            .map(|(n, t, d)| (n.as_str(), *t, d.clone()))
            .collect();
        let b = header(&kv, &tensors);
        let offset: u64 = tensors
            .iter()
            .map(|(_, t, dims)| data_bytes(*t, dims))
            .sum();
        let data = (b.len() as u64).div_ceil(32) * 32;
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(&b).unwrap();
        f.set_len(data + offset).unwrap();
    }
}
