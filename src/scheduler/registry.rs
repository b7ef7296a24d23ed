//! The configured models, routed by name or alias. Each [`ModelSlot`] holds what does not
//! change while serving: settings, its queue, the device whose memory it draws from, and
//! facts read from its GGUF header for `/v1/models`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

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

/// Where a model's definition came from: what a config reload or a models-folder rescan
/// may change (each touches only its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `[[models]]` entry of the configuration file.
    Config,
    /// A GGUF file in `models_dir`.
    Folder,
    /// Added at run time by `POST /admin/models`.
    Api,
}

impl Origin {
    /// `config`, `models_dir` or `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Folder => "models_dir",
            Self::Api => "api",
        }
    }
}

/// One model definition. A changed or removed model's slot is *retired*: it no longer
/// routes, drains what runs on it and unloads; a changed model gets a new slot.
pub struct ModelSlot {
    /// Position in the registry (and in the pool); never reused.
    pub index: usize,
    /// Its configuration.
    pub settings: ModelSettings,
    /// Its queue and sequence slots.
    pub admission: Admission,
    /// The device whose memory budget it uses (`cpu`, `cuda:0`).
    pub device_key: String,
    /// Facts from its GGUF header.
    pub file: FileFacts,
    /// Where its definition came from.
    pub origin: Origin,
    retired: AtomicBool,
}

impl ModelSlot {
    /// Whether it serves `kind` (an upstream serves both).
    pub fn serves(&self, kind: ModelKind) -> bool {
        self.settings.kind.is_none_or(|k| k == kind)
    }

    /// Whether it was removed or replaced.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

/// Every model, by name and alias. Slots are added and retired at run time (config
/// reload, models folder, admin API); a retired slot keeps its index.
pub struct Registry {
    slots: RwLock<Vec<Arc<ModelSlot>>>,
    routes: DashMap<String, Arc<ModelSlot>>,
    scheduler: SchedulerSettings,
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
        let registry = Self {
            slots: RwLock::new(Vec::new()),
            routes: DashMap::new(),
            scheduler: scheduler.clone(),
        };
        for settings in models {
            if let Err(e) = registry.insert(settings, Origin::Config, engine) {
                tracing::warn!(model = %settings.name, "{e}");
            }
        }
        registry
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<ModelSlot>>> {
        self.slots.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<ModelSlot>>> {
        self.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for `settings` with the facts of its file, not yet routed.
    fn make(
        &self,
        index: usize,
        settings: &ModelSettings,
        file: FileFacts,
        origin: Origin,
        engine: &dyn Engine,
    ) -> Arc<ModelSlot> {
        let mut settings = settings.clone();
        // What a local model serves is settled here, once: the engine loads it so.
        if settings.kind.is_none() && !matches!(settings.source, ModelSource::Upstream { .. }) {
            settings.kind = Some(if file.embedding {
                ModelKind::Embedding
            } else {
                ModelKind::Chat
            });
        }
        Arc::new(ModelSlot {
            index,
            admission: Admission::new(
                &settings.name,
                settings.max_concurrent,
                settings.queue_size,
                settings.queue_timeout(self.scheduler.queue_timeout_secs),
            ),
            device_key: engine.device_key(&settings),
            file,
            settings,
            origin,
            retired: AtomicBool::new(false),
        })
    }

    /// Adds and routes a model; its name and aliases must not name another live model.
    /// Blocking: reads the GGUF header (before taking the lock). For start-up: at run
    /// time the scheduler prepares, gives the pool, then publishes.
    pub fn insert(
        &self,
        settings: &ModelSettings,
        origin: Origin,
        engine: &dyn Engine,
    ) -> Result<Arc<ModelSlot>, String> {
        let slot = self.prepare(settings, origin, engine, false)?;
        self.publish(&slot);
        Ok(slot)
    }

    /// Makes the slot of a new model (the next index), not routed yet, after checking that
    /// its name and aliases are free (with `replacing`, the live model of the same name
    /// may hold them). Blocking: reads the GGUF header (before taking the lock). Callers
    /// serialise prepare + publish (the scheduler's change lock).
    pub fn prepare(
        &self,
        settings: &ModelSettings,
        origin: Origin,
        engine: &dyn Engine,
        replacing: bool,
    ) -> Result<Arc<ModelSlot>, String> {
        let file = file_facts(settings);
        let mut slots = self.write();
        if self.live(&settings.name).is_some() && !replacing {
            return Err(format!("a model named `{}` already exists", settings.name));
        }
        for id in settings.ids() {
            if let Some(taken) = self.routes.get(id) {
                if taken.settings.name != settings.name {
                    return Err(format!(
                        "`{id}` already names model `{}`",
                        taken.settings.name
                    ));
                }
            }
        }
        let slot = self.make(slots.len(), settings, file, origin, engine);
        // Not live until published: counted as retired until then.
        slot.retired.store(true, Ordering::Release);
        slots.push(slot.clone());
        Ok(slot)
    }

    /// Routes a prepared slot: its name and aliases point at it from now on; the live model
    /// of the same name, if any, is retired (and returned). Atomic for readers of a name:
    /// they find the old model or the new one, never neither.
    pub fn publish(&self, slot: &Arc<ModelSlot>) -> Option<Arc<ModelSlot>> {
        let _slots = self.write();
        let old = self
            .live(&slot.settings.name)
            .filter(|s| !Arc::ptr_eq(s, slot));
        slot.retired.store(false, Ordering::Release);
        for id in slot.settings.ids() {
            self.routes.insert(id.clone(), slot.clone());
        }
        if let Some(old) = &old {
            self.unroute(old);
        }
        old
    }

    /// The live model whose name (not alias) is `name`.
    fn live(&self, name: &str) -> Option<Arc<ModelSlot>> {
        self.routes
            .get(name)
            .map(|s| s.clone())
            .filter(|s| s.settings.name == name)
    }

    /// Retires `slot` and removes the routes that still lead to it.
    fn unroute(&self, slot: &Arc<ModelSlot>) {
        slot.retired.store(true, Ordering::Release);
        for id in slot.settings.ids() {
            self.routes.remove_if(id, |_, s| Arc::ptr_eq(s, slot));
        }
    }

    /// Retires the live model named `name` (not an alias): it routes no more. Returns it.
    pub fn retire(&self, name: &str) -> Option<Arc<ModelSlot>> {
        let _slots = self.write();
        let slot = self.live(name)?;
        self.unroute(&slot);
        Some(slot)
    }

    /// The model a client's `model` field names.
    pub fn resolve(&self, id: &str) -> Result<Arc<ModelSlot>, SchedulerError> {
        self.routes
            .get(id)
            .map(|s| s.clone())
            .ok_or_else(|| SchedulerError::ModelNotFound(id.chars().take(128).collect()))
    }

    /// Every live model, in the order they were added.
    pub fn slots(&self) -> Vec<Arc<ModelSlot>> {
        self.read()
            .iter()
            .filter(|s| !s.is_retired())
            .cloned()
            .collect()
    }

    /// Every slot ever added, retired ones included, by index.
    pub fn all_slots(&self) -> Vec<Arc<ModelSlot>> {
        self.read().clone()
    }
}
