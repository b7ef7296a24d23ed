//! The configured models, routed by name or alias. Each [`ModelSlot`] holds what does not
//! change while serving: settings, its queue, the device whose memory it draws from, and
//! facts read from its GGUF header for `/v1/models`.

use std::sync::Arc;

use dashmap::DashMap;

use super::admission::Admission;
use super::SchedulerError;
use crate::config::{ModelKind, ModelSettings, ModelSource, SchedulerSettings};
use crate::engine::Engine;

/// Facts about a model's file, read once at start-up when the file is there.
#[derive(Debug, Clone, Default)]
pub struct FileFacts {
    /// `Q4_1`, `Q8_0`, ... (from `general.file_type`).
    pub quantization: Option<String>,
    /// File size in bytes.
    pub size_bytes: Option<u64>,
    /// Parameter count.
    pub parameters: Option<u64>,
    /// `general.architecture`.
    pub architecture: Option<String>,
    /// The file is an embedding model: an encoder architecture, or it names a pooling type.
    pub embedding: bool,
    /// `{arch}.embedding_length`, for an embedding model.
    pub embedding_length: Option<usize>,
}

/// Architectures (llama.cpp's names) that only encode: embedding models.
const ENCODER_ARCHITECTURES: &[&str] = &[
    "bert",
    "nomic-bert",
    "nomic-bert-moe",
    "jina-bert-v2",
    "jina-bert-v3",
    "modern-bert",
    "neo-bert",
    "eurobert",
    "t5encoder",
];

/// One configured model.
pub struct ModelSlot {
    /// Position in the registry (and in the pool).
    pub index: usize,
    /// Its configuration.
    pub settings: ModelSettings,
    /// Its queue and sequence slots.
    pub admission: Admission,
    /// The device whose memory budget it uses (`cpu`, `cuda:0`).
    pub device_key: String,
    /// Facts from its GGUF header.
    pub file: FileFacts,
}

impl ModelSlot {
    /// Whether it serves `kind` (an upstream serves both).
    pub fn serves(&self, kind: ModelKind) -> bool {
        self.settings.kind.is_none_or(|k| k == kind)
    }
}

/// All configured models, by name and alias.
pub struct Registry {
    slots: Vec<Arc<ModelSlot>>,
    routes: DashMap<String, Arc<ModelSlot>>,
}

fn file_facts(settings: &ModelSettings) -> FileFacts {
    let ModelSource::File(path) = &settings.source else {
        return FileFacts::default();
    };
    match crate::gguf::read_summary(path) {
        Ok(s) => FileFacts {
            quantization: Some(s.quantization()),
            size_bytes: Some(s.file_size),
            parameters: Some(s.parameters()),
            architecture: s.architecture().map(str::to_string),
            embedding: s
                .architecture()
                .is_some_and(|a| ENCODER_ARCHITECTURES.contains(&a))
                || s.arch_u64("pooling_type").is_some(),
            embedding_length: s.arch_u64("embedding_length").map(|n| n as usize),
        },
        Err(_) => FileFacts {
            size_bytes: std::fs::metadata(path).ok().map(|m| m.len()),
            ..FileFacts::default()
        },
    }
}

impl Registry {
    /// Builds the routing table (names and aliases were checked unique by the config).
    pub fn new(
        models: &[ModelSettings],
        scheduler: &SchedulerSettings,
        engine: &dyn Engine,
    ) -> Self {
        let routes = DashMap::new();
        let mut slots = Vec::new();
        for (index, settings) in models.iter().enumerate() {
            let file = file_facts(settings);
            let mut settings = settings.clone();
            // What a local model serves is settled here, once: the engine loads it so.
            if settings.kind.is_none() && !matches!(settings.source, ModelSource::Upstream { .. }) {
                settings.kind = Some(if file.embedding {
                    ModelKind::Embedding
                } else {
                    ModelKind::Chat
                });
            }
            let slot = Arc::new(ModelSlot {
                index,
                admission: Admission::new(
                    &settings.name,
                    settings.max_concurrent,
                    settings.queue_size,
                    settings.queue_timeout(scheduler.queue_timeout_secs),
                ),
                device_key: engine.device_key(&settings),
                file,
                settings: settings.clone(),
            });
            for id in std::iter::once(&settings.name).chain(&settings.aliases) {
                routes.insert(id.clone(), slot.clone());
            }
            slots.push(slot);
        }
        Self { slots, routes }
    }

    /// The model a client's `model` field names.
    pub fn resolve(&self, id: &str) -> Result<Arc<ModelSlot>, SchedulerError> {
        self.routes
            .get(id)
            .map(|s| s.clone())
            .ok_or_else(|| SchedulerError::ModelNotFound(id.chars().take(128).collect()))
    }

    /// Every model, in configuration order.
    pub fn slots(&self) -> &[Arc<ModelSlot>] {
        &self.slots
    }
}
