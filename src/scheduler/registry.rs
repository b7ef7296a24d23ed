//! The configured models, routed by name or alias. Each [`ModelSlot`] holds what does not
//! change while serving: settings, its queue, the device whose memory it draws from, and
//! facts read from its GGUF header for `/v1/models`.

use std::sync::Arc;

use dashmap::DashMap;

use super::admission::Admission;
use super::SchedulerError;
use crate::config::{ModelSettings, ModelSource, SchedulerSettings};
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
}

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
            let slot = Arc::new(ModelSlot {
                index,
                admission: Admission::new(
                    &settings.name,
                    settings.max_concurrent,
                    settings.queue_size,
                    settings.queue_timeout(scheduler.queue_timeout_secs),
                ),
                device_key: engine.device_key(settings),
                file: file_facts(settings),
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
