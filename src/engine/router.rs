//! The engine the server is built with: hands each model to the engine its settings
//! name (mistral.rs, llama.cpp or an upstream server), so the scheduler sees one
//! [`Engine`] whatever runs underneath.

use std::sync::Arc;

use async_trait::async_trait;

use super::llama_cpp::LlamaCppEngine;
#[cfg(feature = "mistralrs")]
use super::mistralrs::MistralRsEngine;
use super::upstream::UpstreamEngine;
use super::{Engine, EngineError, LoadedModel};
use crate::config::{EngineKind, ModelSettings};
use crate::memory::Footprint;

/// Routes every model to the engine its settings ask for.
pub struct EngineRouter {
    mistralrs: Arc<dyn Engine>,
    llama_cpp: Arc<dyn Engine>,
    upstream: Arc<dyn Engine>,
}

impl Default for EngineRouter {
    fn default() -> Self {
        Self {
            #[cfg(feature = "mistralrs")]
            mistralrs: Arc::new(MistralRsEngine),
            #[cfg(not(feature = "mistralrs"))]
            mistralrs: Arc::new(NotBuilt),
            llama_cpp: Arc::new(LlamaCppEngine),
            upstream: Arc::new(UpstreamEngine),
        }
    }
}

/// The mistral.rs engine in a build without it (`--no-default-features`, as
/// scripts/serve.sh builds on a CPU-only machine): the configuration refuses such models
/// at start-up, so this only answers if one is added at run time.
#[cfg(not(feature = "mistralrs"))]
struct NotBuilt;

#[cfg(not(feature = "mistralrs"))]
const NOT_BUILT: &str = "this binary was built without the mistral.rs engine; build it with `cargo build` (default features) to use engine = \"mistralrs\"";

#[cfg(not(feature = "mistralrs"))]
#[async_trait]
impl Engine for NotBuilt {
    async fn load(&self, _settings: &ModelSettings) -> Result<Arc<dyn LoadedModel>, EngineError> {
        Err(EngineError::Load(NOT_BUILT.into()))
    }

    fn estimate_footprint(&self, _settings: &ModelSettings) -> Result<Footprint, String> {
        Err(NOT_BUILT.into())
    }
}

impl EngineRouter {
    fn pick(&self, settings: &ModelSettings) -> &dyn Engine {
        match settings.engine_kind() {
            EngineKind::MistralRs => self.mistralrs.as_ref(),
            EngineKind::LlamaCpp => self.llama_cpp.as_ref(),
            EngineKind::Upstream => self.upstream.as_ref(),
        }
    }
}

#[async_trait]
impl Engine for EngineRouter {
    async fn load(&self, settings: &ModelSettings) -> Result<Arc<dyn LoadedModel>, EngineError> {
        self.pick(settings).load(settings).await
    }

    fn device_key(&self, settings: &ModelSettings) -> String {
        self.pick(settings).device_key(settings)
    }

    fn device_memory(&self, device_key: &str) -> Option<u64> {
        // Device memory does not depend on the engine asking: llama.cpp knows the GPUs
        // of its backends (Vulkan ones too), mistral.rs its CUDA and Metal ones.
        self.llama_cpp
            .device_memory(device_key)
            .or_else(|| self.mistralrs.device_memory(device_key))
    }

    fn estimate_footprint(&self, settings: &ModelSettings) -> Result<Footprint, String> {
        self.pick(settings).estimate_footprint(settings)
    }

    fn device_usage(&self) -> Vec<super::DeviceUsage> {
        self.llama_cpp.device_usage()
    }

    fn offload_layers(&self, settings: &ModelSettings) -> Option<u32> {
        self.pick(settings).offload_layers(settings)
    }

    fn offload_split(&self, settings: &ModelSettings) -> Vec<(String, f64)> {
        self.pick(settings).offload_split(settings)
    }
}
