//! Memory accounting: byte sizes, what a model is expected to take once loaded, and how
//! much each device may hold. Depends on nothing else in the crate, so settings, engines
//! and the scheduler can all use it.
//!
//! Footprint estimate (bytes) = weights + KV cache + overhead, where
//! - weights  = the GGUF's tensor bytes (read from its header) + the token-embedding
//!   table dequantized to f32 (vocabulary × embedding length × 4; the engine keeps it
//!   dequantized for lookups),
//! - KV cache = 2 (K and V) × layers × KV heads × head dimension × bytes per value
//!   (4 on CPU, 2 on GPU) × context length × max concurrent sequences — the worst case,
//!   every sequence at full context,
//! - overhead = 64 MiB for the engine's buffers and tokenizer.
//!
//! The KV cache of mistral.rs grows with use, so a fresh model takes less than this; the
//! estimate is an upper bound that makes loads safe under full load (docs/BENCHMARKS.md
//! compares it with measured RSS growth).

use std::fmt;

use serde::Deserialize;

use crate::gguf::GgufSummary;

/// Fixed allowance for engine buffers, tokenizer and bookkeeping.
pub const ENGINE_OVERHEAD_BYTES: u64 = 64 * 1024 * 1024;

/// A setting written as a plain number or as text with a unit (durations, sizes).
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum NumberOrText {
    /// A bare number, in the setting's base unit.
    Number(u64),
    /// Text to parse, e.g. `"5m"` or `"8GiB"`.
    Text(String),
}

/// Device key of models served by another machine: they draw on no local budget.
pub const REMOTE_DEVICE: &str = "remote";

/// A size in bytes, written in config as a number or with a unit (`"512MiB"`, `"8GB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `123`, `"123"`, `"1.5GiB"`, `"512 MB"`, `"64k"`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{raw}` is not a size; write e.g. 8GiB, 512MB or 1048576"))?;
        let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" => 1e3,
            "kib" => 1024.0,
            "m" | "mb" => 1e6,
            "mib" => 1024.0 * 1024.0,
            "g" | "gb" => 1e9,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            "t" | "tb" => 1e12,
            "tib" => 1024.0f64.powi(4),
            other => {
                return Err(format!(
                    "`{other}` is not a size unit; use B, KB, KiB, MB, MiB, GB, GiB, TB or TiB"
                ))
            }
        };
        Ok(Self((value * multiplier) as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if b >= 1024.0 * 1024.0 * 1024.0 {
            write!(f, "{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
        } else {
            write!(f, "{:.1} MiB", b / (1024.0 * 1024.0))
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(Self(n)),
            NumberOrText::Text(t) => Self::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// The expected memory of one loaded model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Tensor bytes.
    pub weights: u64,
    /// Worst-case KV cache.
    pub kv_cache: u64,
    /// Fixed allowance.
    pub overhead: u64,
}

impl Footprint {
    /// The footprint of a model whose file is not here yet: the scheduler reserves the
    /// whole budget for it until it is loaded.
    pub const UNKNOWN: Self = Self {
        weights: u64::MAX,
        kv_cache: 0,
        overhead: 0,
    };

    /// Whether this is [`Footprint::UNKNOWN`].
    pub fn is_unknown(&self) -> bool {
        *self == Self::UNKNOWN
    }

    /// All together.
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.kv_cache)
            .saturating_add(self.overhead)
    }

    /// Two footprints held together (a model and its draft model), part by part.
    pub fn plus(self, other: Self) -> Self {
        Self {
            weights: self.weights.saturating_add(other.weights),
            kv_cache: self.kv_cache.saturating_add(other.kv_cache),
            overhead: self.overhead.saturating_add(other.overhead),
        }
    }

    /// The bytes on the GPU and on the CPU of a model of `layers` layers with `on_gpu` of
    /// them offloaded (llama.cpp's `-ngl`). Weights and KV cache are shared out by layer
    /// (llama.cpp keeps each layer's KV cache on that layer's device); the engine's
    /// buffers count on the GPU when any layer is there (its compute buffer is where the
    /// work is), else on the CPU. An estimate: layers are taken to be of one size.
    pub fn split(&self, layers: u32, on_gpu: u32) -> (u64, u64) {
        let (gpus, cpu) = self.split_over(layers, &[on_gpu]);
        (gpus[0], cpu)
    }

    /// The bytes on each of the GPUs holding `shares[i]` of a model's `layers` layers
    /// (see [`layer_shares`]), and on the CPU for the rest ([`Self::split`] is this for
    /// one GPU). Each GPU that holds a layer has compute buffers of its own, so the
    /// engine's buffers count on each of them (on the CPU when none holds a layer).
    pub fn split_over(&self, layers: u32, shares: &[u32]) -> (Vec<u64>, u64) {
        let on_gpus: u32 = shares.iter().sum();
        let layers_all = u128::from(layers.max(1));
        let shared = u128::from(self.weights.saturating_add(self.kv_cache));
        let gpus: Vec<u64> = shares
            .iter()
            .map(|&n| {
                let part = u128::from(n).min(layers_all);
                let bytes = u64::try_from(shared * part / layers_all).unwrap_or(u64::MAX);
                if n == 0 {
                    0
                } else {
                    bytes.saturating_add(self.overhead)
                }
            })
            .collect();
        let on_gpu_bytes = u64::try_from(shared * u128::from(on_gpus).min(layers_all) / layers_all)
            .unwrap_or(u64::MAX);
        let cpu = u64::try_from(shared)
            .unwrap_or(u64::MAX)
            .saturating_sub(on_gpu_bytes);
        if on_gpus == 0 {
            (gpus, cpu.saturating_add(self.overhead))
        } else {
            (gpus, cpu)
        }
    }

    /// A footprint given directly (config override, or an engine that holds no weights).
    pub fn fixed(bytes: u64) -> Self {
        Self {
            weights: bytes,
            kv_cache: 0,
            overhead: 0,
        }
    }

    /// The estimate for a GGUF at `context` tokens × `sequences`, on a CPU or a GPU.
    pub fn estimate(summary: &GgufSummary, context: u64, sequences: u64, on_gpu: bool) -> Self {
        let per_value = if on_gpu { 2 } else { 4 };
        let per_token = summary.kv_bytes_per_token(per_value).unwrap_or(0);
        let embeddings = summary
            .vocab_size()
            .zip(summary.arch_u64("embedding_length"))
            .map_or(0, |(v, d)| v.saturating_mul(d).saturating_mul(4));
        Self {
            weights: summary.tensor_bytes().saturating_add(embeddings),
            kv_cache: per_token
                .saturating_mul(context)
                .saturating_mul(sequences.max(1)),
            overhead: ENGINE_OVERHEAD_BYTES,
        }
    }

    /// The footprint of a GGUF in llama.cpp: the weights as stored (memory-mapped, not
    /// dequantized), an f16 KV cache for `sequences` × `context` tokens, and a compute
    /// buffer of about one batch of logits (`batch` × vocabulary × 4 bytes, measured:
    /// 117.6 MiB for SmolLM2 at batch 512) plus the usual engine overhead.
    pub fn estimate_llama_cpp(
        summary: &GgufSummary,
        context: u64,
        sequences: u64,
        batch: u64,
    ) -> Self {
        let per_token = summary.kv_bytes_per_token(2).unwrap_or(0);
        let compute = summary
            .vocab_size()
            .map_or(0, |v| v.saturating_mul(4).saturating_mul(batch))
            .saturating_add(32 << 20);
        Self {
            weights: summary.tensor_bytes(),
            kv_cache: per_token
                .saturating_mul(context)
                .saturating_mul(sequences.max(1)),
            overhead: ENGINE_OVERHEAD_BYTES.saturating_add(compute),
        }
    }
}

/// The smallest context a model's context is shrunk to so that it fits its device
/// (tokens): below this a chat model is of little use, so the model is refused instead.
pub const MIN_FITTED_CONTEXT: u64 = 2048;

/// Contexts chosen to fit are multiples of this (tokens).
pub const CONTEXT_STEP: u64 = 1024;

/// How a model's footprint grows with its context, for a model whose context is not
/// configured: the footprint at [`MIN_FITTED_CONTEXT`] and the bytes each further
/// [`CONTEXT_STEP`] tokens add (KV cache for every sequence), up to the trained context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextScale {
    /// The context the model was trained for (its footprint's own context).
    pub trained: u64,
    /// The footprint at [`MIN_FITTED_CONTEXT`] tokens.
    pub at_floor: Footprint,
    /// Bytes added per [`CONTEXT_STEP`] tokens.
    pub per_step: u64,
}

impl ContextScale {
    /// The scale from footprints at [`MIN_FITTED_CONTEXT`] and one step above it;
    /// `None` when the model is too small a context to shrink.
    pub fn from_samples(trained: u64, at_floor: Footprint, above: Footprint) -> Option<Self> {
        (trained > MIN_FITTED_CONTEXT).then(|| Self {
            trained,
            at_floor,
            per_step: above.total().saturating_sub(at_floor.total()),
        })
    }

    /// The footprint at `context` tokens (at least the floor).
    pub fn at(&self, context: u64) -> Footprint {
        let steps = context.saturating_sub(MIN_FITTED_CONTEXT) / CONTEXT_STEP;
        Footprint {
            kv_cache: self
                .at_floor
                .kv_cache
                .saturating_add(self.per_step.saturating_mul(steps)),
            ..self.at_floor
        }
    }

    /// The largest context (a multiple of [`CONTEXT_STEP`], below the trained one, at
    /// least [`MIN_FITTED_CONTEXT`]) whose footprint fits in `available` bytes; `None`
    /// when not even the floor fits.
    pub fn fit(&self, available: u64) -> Option<u64> {
        let floor = self.at_floor.total();
        if floor > available {
            return None;
        }
        let steps = (available - floor)
            .checked_div(self.per_step)
            .unwrap_or(u64::MAX);
        let context = MIN_FITTED_CONTEXT
            .saturating_add(steps.saturating_mul(CONTEXT_STEP))
            .min(self.trained / CONTEXT_STEP * CONTEXT_STEP)
            .max(MIN_FITTED_CONTEXT);
        Some(context)
    }
}

/// Default share of a CPU's RAM that models may use.
pub const DEFAULT_CPU_FRACTION: f64 = 0.7;
/// Default share of a GPU's memory that models may use.
pub const DEFAULT_GPU_FRACTION: f64 = 0.9;

/// Physical RAM of this machine, if it can be read.
pub fn system_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident set size of this process, if it can be read.
pub fn process_rss_bytes(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Hands memory freed by an unloaded model back to the operating system. glibc keeps
/// freed heap in its arenas; the engine frees its weights on its own thread shortly after
/// the model is dropped, so this runs a moment later, off the async threads.
pub fn return_freed_memory_soon() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    std::thread::spawn(|| {
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(500));
            // SAFETY: malloc_trim only releases free pages; it has no preconditions.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
}

/// How llama.cpp shares `on_gpu` offloaded layers out over several GPUs whose split
/// weights are `weights` (their free memory, when no `tensor_split` is given): the
/// weights are made cumulative fractions, and offloaded layer k goes to the first GPU
/// whose fraction exceeds k / on_gpu (`llama_model::load_tensors`, in single precision
/// as there). The counts per GPU, in order.
pub fn layer_shares(weights: &[f64], on_gpu: u32) -> Vec<u32> {
    let mut shares = vec![0u32; weights.len()];
    if weights.is_empty() || on_gpu == 0 {
        return shares;
    }
    let mut cumulative: Vec<f32> = Vec::with_capacity(weights.len());
    let mut sum = 0f32;
    for &w in weights {
        sum += w.max(0.0) as f32;
        cumulative.push(sum);
    }
    if sum <= 0.0 {
        // Nothing to go by: all on the first (llama.cpp would divide by zero).
        shares[0] = on_gpu;
        return shares;
    }
    for c in &mut cumulative {
        *c /= sum;
    }
    let last = weights.len() - 1;
    for k in 0..on_gpu {
        let x = k as f32 / on_gpu as f32;
        let device = cumulative.partition_point(|&c| c <= x).min(last);
        shares[device] += 1;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("1024").unwrap().0, 1024);
        assert_eq!(ByteSize::parse("2KiB").unwrap().0, 2048);
        assert_eq!(ByteSize::parse("1.5 GB").unwrap().0, 1_500_000_000);
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("lots").is_err());
    }

    #[test]
    fn the_fitted_context_is_the_largest_step_that_fits() {
        let at_floor = Footprint {
            weights: 1000,
            kv_cache: 2048 * 10,
            overhead: 100,
        };
        let above = Footprint {
            kv_cache: 3072 * 10,
            ..at_floor
        };
        let s = ContextScale::from_samples(131_072, at_floor, above).unwrap();
        assert_eq!(s.per_step, 10_240);
        assert_eq!(s.at(4096).total(), 1100 + 4096 * 10);
        assert_eq!(s.fit(at_floor.total() - 1), None);
        assert_eq!(s.fit(at_floor.total()), Some(2048));
        assert_eq!(s.fit(s.at(8192).total()), Some(8192));
        assert_eq!(s.fit(s.at(8192).total() - 1), Some(7168));
        assert_eq!(s.fit(u64::MAX), Some(131_072));
        // Never past the trained context, never a fit for a model already that small.
        let small = ContextScale::from_samples(3000, at_floor, above).unwrap();
        assert_eq!(small.fit(u64::MAX), Some(2048));
        assert!(ContextScale::from_samples(2048, at_floor, above).is_none());
    }

    #[test]
    fn offloaded_layers_are_shared_by_weight_as_llama_cpp_does() {
        assert_eq!(layer_shares(&[1.0, 1.0], 31), vec![16, 15]);
        assert_eq!(layer_shares(&[3.0, 1.0], 8), vec![6, 2]);
        assert_eq!(layer_shares(&[1.0, 1.0, 2.0], 12), vec![3, 3, 6]);
        assert_eq!(layer_shares(&[1.0, 0.0], 5), vec![5, 0]);
        assert_eq!(layer_shares(&[0.0, 0.0], 5), vec![5, 0]);
        assert_eq!(layer_shares(&[1.0, 1.0], 0), vec![0, 0]);
        for n in 0..40 {
            assert_eq!(layer_shares(&[2.5, 1.5, 7.0], n).iter().sum::<u32>(), n);
        }
        let f = Footprint {
            weights: 900,
            kv_cache: 100,
            overhead: 50,
        };
        assert_eq!(f.split_over(10, &[5, 5]), (vec![550, 550], 0));
        assert_eq!(f.split_over(10, &[3, 1]), (vec![350, 150], 600));
        assert_eq!(f.split_over(10, &[0, 0]), (vec![0, 0], 1050));
        assert_eq!(f.split_over(10, &[4, 0]), (vec![450, 0], 600));
    }

    #[test]
    fn a_split_shares_weights_and_cache_by_layer() {
        let f = Footprint {
            weights: 900,
            kv_cache: 100,
            overhead: 50,
        };
        assert_eq!(f.split(10, 10), (1050, 0));
        assert_eq!(f.split(10, 4), (450, 600));
        assert_eq!(f.split(10, 0), (0, 1050));
        assert_eq!(
            f.split(10, 99),
            (1050, 0),
            "more layers than the model has: all"
        );
        let (gpu, cpu) = f.split(3, 1);
        assert_eq!(gpu + cpu, f.total());
    }

    #[test]
    fn system_memory_is_known_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(system_memory_bytes().unwrap() > 100 * 1024 * 1024);
            assert!(process_rss_bytes(None).unwrap() > 0);
        }
    }
}
