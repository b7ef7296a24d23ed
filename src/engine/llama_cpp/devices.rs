//! The GPUs llama.cpp can use in this build, and where a model's weights go.
//!
//! Devices are found through ggml's own backend registry (`ggml_backend_dev_*`, via
//! llama-cpp-2), never by parsing a tool's output: a `vulkan` build lists the Vulkan
//! devices the loader reports, a `cuda` build the CUDA ones. `vulkan:N` is the N-th
//! device of that backend. ggml leaves CPU-type Vulkan devices (Mesa's lavapipe) out
//! unless `GGML_VK_VISIBLE_DEVICES` names them, so `auto` never picks a software "GPU".

use llama_cpp_2::model::params::{LlamaModelParams, LlamaSplitMode};
use llama_cpp_2::{LlamaBackendDevice, LlamaBackendDeviceType};

use crate::config::{DeviceSetting, GpuLayers, SplitMode};
use crate::engine::EngineError;

/// A GPU of this build, as llama.cpp sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuDevice {
    /// Its index among ggml's backend devices (what a model's device list holds).
    pub index: usize,
    /// The key llamagate names it by: `vulkan:0`, `cuda:1`, `metal:0`.
    pub key: String,
    /// ggml's name (`Vulkan0`) and description (the card's name).
    pub name: String,
    /// What the driver calls it.
    pub description: String,
    /// Total memory, bytes.
    pub memory_total: u64,
    /// Free memory when listed, bytes.
    pub memory_free: u64,
}

/// llamagate's name for a ggml backend, when it is a GPU backend.
fn kind_of(backend: &str) -> Option<&'static str> {
    match backend.to_ascii_lowercase().as_str() {
        "vulkan" => Some("vulkan"),
        "cuda" => Some("cuda"),
        "metal" | "mtl" => Some("metal"),
        _ => None,
    }
}

/// Names the GPU devices of a ggml device list, numbering each backend's devices from 0.
fn name_gpus(devices: Vec<LlamaBackendDevice>) -> Vec<GpuDevice> {
    let mut seen: Vec<(&'static str, usize)> = Vec::new();
    let mut out = Vec::new();
    for d in devices {
        let gpu = matches!(
            d.device_type,
            LlamaBackendDeviceType::Gpu | LlamaBackendDeviceType::IntegratedGpu
        );
        let Some(kind) = kind_of(&d.backend).filter(|_| gpu) else {
            continue;
        };
        let ordinal = match seen.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                seen.push((kind, 0));
                0
            }
        };
        out.push(GpuDevice {
            index: d.index,
            key: format!("{kind}:{ordinal}"),
            name: d.name,
            description: d.description,
            memory_total: d.memory_total as u64,
            memory_free: d.memory_free as u64,
        });
    }
    out
}

/// The GPUs this build of llama.cpp can use, in ggml's order (none on a CPU-only build).
pub fn gpus() -> Vec<GpuDevice> {
    if super::backend().is_err() {
        return Vec::new();
    }
    name_gpus(llama_cpp_2::list_llama_ggml_backend_devices())
}

/// The GPU a `device` setting names: `None` for the CPU (`cpu`, or `auto` without a GPU).
pub fn resolve(setting: DeviceSetting, gpus: &[GpuDevice]) -> Result<Option<GpuDevice>, String> {
    match setting {
        DeviceSetting::Cpu => Ok(None),
        DeviceSetting::Auto => Ok(gpus.first().cloned()),
        named => {
            let key = named.to_string();
            gpus.iter()
                .find(|g| g.key == key)
                .cloned()
                .map(Some)
                .ok_or_else(|| {
                    let have = if gpus.is_empty() {
                        "this build's llama.cpp sees no GPU (built with the features: ".to_string()
                            + &built_backends().join(", ")
                            + ")"
                    } else {
                        format!(
                            "the GPUs here are {}",
                            gpus.iter()
                                .map(|g| format!("{} ({})", g.key, g.description))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    format!("device {key} is not available to llama.cpp: {have}")
                })
        }
    }
}

/// The GPUs a model runs on: its `devices` when it lists several (the first being the
/// main one), else the one its `device` names; empty for the CPU.
pub fn resolve_all(
    settings: &crate::config::ModelSettings,
    gpus: &[GpuDevice],
) -> Result<Vec<GpuDevice>, String> {
    if settings.devices.is_empty() {
        return Ok(resolve(settings.device, gpus)?.into_iter().collect());
    }
    let mut out = Vec::with_capacity(settings.devices.len());
    for &d in &settings.devices {
        out.extend(resolve(d, gpus)?);
    }
    if settings.split_mode == SplitMode::Row && !out.iter().all(|g| g.key.starts_with("cuda")) {
        return Err(format!(
            "split_mode = \"row\" splits weight rows across CUDA GPUs only ({} are not); use \"layer\"",
            out.iter().map(|g| g.key.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(out)
}

/// The GPU backends this binary's llama.cpp was built with.
pub fn built_backends() -> Vec<&'static str> {
    let mut out = vec!["cpu"];
    if cfg!(feature = "vulkan") {
        out.push("vulkan");
    }
    if cfg!(feature = "cuda") {
        out.push("cuda");
    }
    if cfg!(feature = "metal") {
        out.push("metal");
    }
    out
}

/// Where a model's weights go: which GPUs, and how many of its layers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    /// The GPU, or `None` for the CPU alone; with several GPUs, the main one.
    pub gpu: Option<GpuDevice>,
    /// The other GPUs the layers are split over (`devices`), in order.
    pub others: Vec<GpuDevice>,
    /// How the layers are split over several GPUs.
    pub split_mode: SplitMode,
    /// Layers offloaded to the GPUs (`0..=layers`; llama.cpp counts the output layer as
    /// one more than the repeating blocks).
    pub gpu_layers: u32,
    /// All the model's layers, the output layer included.
    pub layers: u32,
}

impl Placement {
    /// Places a model of `blocks` repeating layers on `gpus` (none: the CPU) by its
    /// settings; a `gpu_layers` above what the model has is refused with the numbers.
    pub fn of(
        gpus: Vec<GpuDevice>,
        wanted: GpuLayers,
        split_mode: SplitMode,
        blocks: u32,
    ) -> Result<Self, String> {
        let layers = blocks.saturating_add(1);
        let mut gpus = gpus.into_iter();
        let gpu = gpus.next();
        let gpu_layers = match (&gpu, wanted) {
            (None, _) => 0,
            (Some(_), GpuLayers::Auto) => layers,
            (Some(_), GpuLayers::Count(n)) if n > layers => {
                return Err(format!(
                    "gpu_layers = {n}, but the model has {layers} layers ({blocks} blocks and its output layer); use at most {layers} or \"auto\""
                ))
            }
            (Some(_), GpuLayers::Count(n)) => n,
        };
        Ok(Self {
            gpu,
            others: gpus.collect(),
            split_mode,
            gpu_layers,
            layers,
        })
    }

    /// The device key its memory is counted on (the main GPU's with several).
    pub fn device_key(&self) -> String {
        self.gpu
            .as_ref()
            .map_or_else(|| "cpu".into(), |g| g.key.clone())
    }

    /// `/v1/models`' device: `cpu`, or `vulkan:0` with what the driver calls it
    /// (`cuda:0+cuda:1 (…)` for a model split over several).
    pub fn describe(&self) -> String {
        match &self.gpu {
            None => "cpu".into(),
            Some(g) => {
                let keys: Vec<&str> = std::iter::once(g)
                    .chain(&self.others)
                    .map(|d| d.key.as_str())
                    .collect();
                format!("{} ({})", keys.join("+"), g.description)
            }
        }
    }

    /// llama.cpp's model parameters for it: read into memory (not mapped, see
    /// [`super::model_params`]), on its GPUs alone (no other device, so that nothing is
    /// offloaded elsewhere) with `gpu_layers` layers there, split over several GPUs in
    /// proportion to their free memory (llama.cpp's default split: `llama-cpp-2` 0.1.160
    /// has no way to pass `tensor_split`).
    pub fn params(&self) -> Result<LlamaModelParams, EngineError> {
        let devices: Vec<usize> = self
            .gpu
            .iter()
            .chain(&self.others)
            .map(|g| g.index)
            .collect();
        let split = match self.split_mode {
            SplitMode::Layer => LlamaSplitMode::Layer,
            SplitMode::Row => LlamaSplitMode::Row,
        };
        super::model_params()
            .with_devices(&devices)
            .map(|p| {
                p.with_n_gpu_layers(self.gpu_layers)
                    .with_split_mode(split)
                    .with_main_gpu(0)
            })
            .map_err(|e| EngineError::Load(format!("llama.cpp refused the device list: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(index: usize, backend: &str, kind: LlamaBackendDeviceType) -> LlamaBackendDevice {
        LlamaBackendDevice {
            index,
            name: format!("{backend}{index}"),
            description: format!("card {index}"),
            backend: backend.into(),
            memory_total: 8 << 30,
            memory_free: 6 << 30,
            device_type: kind,
        }
    }

    #[test]
    fn gpus_are_numbered_per_backend_and_the_cpu_is_left_out() {
        let gpus = name_gpus(vec![
            device(0, "CPU", LlamaBackendDeviceType::Cpu),
            device(1, "Vulkan", LlamaBackendDeviceType::Gpu),
            device(2, "CUDA", LlamaBackendDeviceType::Gpu),
            device(3, "Vulkan", LlamaBackendDeviceType::IntegratedGpu),
        ]);
        let keys: Vec<_> = gpus.iter().map(|g| (g.key.as_str(), g.index)).collect();
        assert_eq!(keys, [("vulkan:0", 1), ("cuda:0", 2), ("vulkan:1", 3)]);
    }

    #[test]
    fn settings_resolve_to_a_device_or_a_reason() {
        let gpus = name_gpus(vec![device(1, "Vulkan", LlamaBackendDeviceType::Gpu)]);
        assert_eq!(resolve(DeviceSetting::Cpu, &gpus), Ok(None));
        assert_eq!(
            resolve(DeviceSetting::Auto, &gpus).unwrap().unwrap().index,
            1
        );
        assert_eq!(resolve(DeviceSetting::Auto, &[]), Ok(None));
        assert_eq!(
            resolve(DeviceSetting::Vulkan(0), &gpus)
                .unwrap()
                .unwrap()
                .index,
            1
        );
        let why = resolve(DeviceSetting::Vulkan(1), &gpus).unwrap_err();
        assert!(
            why.contains("vulkan:1") && why.contains("vulkan:0 (card 1)"),
            "{why}"
        );
        let why = resolve(DeviceSetting::Cuda(0), &[]).unwrap_err();
        assert!(why.contains("sees no GPU"), "{why}");
    }

    #[test]
    fn layers_are_all_some_or_refused_with_the_numbers() {
        let gpu = name_gpus(vec![device(1, "Vulkan", LlamaBackendDeviceType::Gpu)]);
        let layer = SplitMode::Layer;
        let all = Placement::of(gpu.clone(), GpuLayers::Auto, layer, 30).unwrap();
        assert_eq!((all.gpu_layers, all.layers), (31, 31));
        assert_eq!(
            Placement::of(gpu.clone(), GpuLayers::Count(12), layer, 30)
                .unwrap()
                .gpu_layers,
            12
        );
        let why = Placement::of(gpu.clone(), GpuLayers::Count(40), layer, 30).unwrap_err();
        assert!(why.contains("40") && why.contains("31 layers"), "{why}");
        let cpu = Placement::of(Vec::new(), GpuLayers::Count(40), layer, 30).unwrap();
        assert_eq!((cpu.gpu_layers, cpu.device_key()), (0, "cpu".to_string()));
        assert_eq!(all.device_key(), "vulkan:0");
    }

    #[test]
    fn several_gpus_of_one_kind_are_resolved_in_order_and_row_split_is_cuda_only() {
        let gpus = name_gpus(vec![
            device(1, "Vulkan", LlamaBackendDeviceType::Gpu),
            device(2, "Vulkan", LlamaBackendDeviceType::Gpu),
        ]);
        let mut settings = crate::config::ModelSettings::new(
            "split",
            crate::config::ModelSource::File("m.gguf".into()),
        );
        settings.devices = vec![DeviceSetting::Vulkan(1), DeviceSetting::Vulkan(0)];
        let found = resolve_all(&settings, &gpus).unwrap();
        let keys: Vec<&str> = found.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(keys, ["vulkan:1", "vulkan:0"]);
        let placed = Placement::of(found, GpuLayers::Auto, SplitMode::Layer, 30).unwrap();
        assert_eq!(placed.device_key(), "vulkan:1");
        assert_eq!(placed.describe(), "vulkan:1+vulkan:0 (card 2)");
        settings.split_mode = SplitMode::Row;
        let why = resolve_all(&settings, &gpus).unwrap_err();
        assert!(why.contains("CUDA GPUs only"), "{why}");
        settings.devices.push(DeviceSetting::Vulkan(2));
        settings.split_mode = SplitMode::Layer;
        assert!(resolve_all(&settings, &gpus)
            .unwrap_err()
            .contains("vulkan:2"));
    }
}
