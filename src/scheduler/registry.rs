//! The configured models, routed by name or alias, each with an explicit lifecycle:
//! Unloaded → Loading → Ready, or Failed with the load error (retried by the next
//! request). Concurrent first requests share one load (single-flight).

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use dashmap::DashMap;
use futures::future::{BoxFuture, FutureExt, Shared};

use super::admission::Admission;
use crate::config::ModelSettings;
use crate::engine::{Engine, LoadedModel};
use crate::error::ApiError;

type LoadFuture = Shared<BoxFuture<'static, Result<Arc<dyn LoadedModel>, String>>>;

/// Where a model is in its lifecycle.
#[derive(Clone)]
enum SlotState {
    Unloaded,
    Loading(LoadFuture),
    Ready {
        model: Arc<dyn LoadedModel>,
        loaded_at: SystemTime,
    },
    Failed {
        error: String,
    },
}

/// One configured model.
pub struct ModelSlot {
    /// Its configuration.
    pub settings: ModelSettings,
    /// Its queue and slots.
    pub admission: Admission,
    state: Mutex<SlotState>,
}

/// A snapshot of a model's state, for `/v1/models`.
#[derive(Debug, Clone)]
pub struct SlotStatus {
    /// `unloaded`, `loading`, `ready` or `failed`.
    pub status: &'static str,
    /// Known once loaded.
    pub context_length: Option<usize>,
    /// The device it runs on, once loaded.
    pub device: Option<String>,
    /// When it became ready.
    pub loaded_at: Option<SystemTime>,
    /// The last load error.
    pub error: Option<String>,
}

impl ModelSlot {
    /// A slot for `settings`, unloaded.
    pub fn new(settings: ModelSettings) -> Self {
        let admission = Admission::new(
            &settings.name,
            settings.max_concurrent,
            settings.queue_size,
            settings.queue_timeout(),
        );
        Self {
            settings,
            admission,
            state: Mutex::new(SlotState::Unloaded),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The model's state now.
    pub fn status(&self) -> SlotStatus {
        match &*self.lock() {
            SlotState::Unloaded => SlotStatus {
                status: "unloaded",
                context_length: None,
                device: None,
                loaded_at: None,
                error: None,
            },
            SlotState::Loading(_) => SlotStatus {
                status: "loading",
                context_length: None,
                device: None,
                loaded_at: None,
                error: None,
            },
            SlotState::Ready { model, loaded_at } => SlotStatus {
                status: "ready",
                context_length: Some(model.facts().context_length),
                device: Some(model.facts().device.clone()),
                loaded_at: Some(*loaded_at),
                error: None,
            },
            SlotState::Failed { error } => SlotStatus {
                status: "failed",
                context_length: None,
                device: None,
                loaded_at: None,
                error: Some(error.clone()),
            },
        }
    }

    /// The loaded model, loading it first if needed (one load shared by all callers).
    pub async fn ensure_loaded(
        &self,
        engine: &Arc<dyn Engine>,
    ) -> Result<Arc<dyn LoadedModel>, ApiError> {
        let load = {
            let mut state = self.lock();
            match &*state {
                SlotState::Ready { model, .. } => return Ok(model.clone()),
                SlotState::Loading(load) => load.clone(),
                SlotState::Unloaded | SlotState::Failed { .. } => {
                    let engine = engine.clone();
                    let settings = self.settings.clone();
                    tracing::info!(model = %settings.name, source = %settings.source, "loading model");
                    // Spawned so that a client leaving does not abandon the load.
                    let task = tokio::spawn(async move {
                        let started = std::time::Instant::now();
                        let result = engine.load(&settings).await;
                        match &result {
                            Ok(m) => tracing::info!(
                                model = %settings.name,
                                device = %m.facts().device,
                                context_length = m.facts().context_length,
                                seconds = started.elapsed().as_secs_f64(),
                                "model loaded"
                            ),
                            Err(e) => {
                                tracing::warn!(model = %settings.name, error = %e, "model load failed")
                            }
                        }
                        result
                    });
                    let load: LoadFuture = async move {
                        match task.await {
                            Ok(Ok(model)) => Ok(model),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err("the loader crashed".to_string()),
                        }
                    }
                    .boxed()
                    .shared();
                    *state = SlotState::Loading(load.clone());
                    load
                }
            }
        };
        let result = load.await;
        {
            let mut state = self.lock();
            if matches!(&*state, SlotState::Loading(_)) {
                *state = match &result {
                    Ok(model) => SlotState::Ready {
                        model: model.clone(),
                        loaded_at: SystemTime::now(),
                    },
                    Err(error) => SlotState::Failed {
                        error: error.clone(),
                    },
                };
            }
        }
        result.map_err(|reason| ApiError::ModelLoadFailed {
            model: self.settings.name.clone(),
            reason,
        })
    }
}

/// All configured models, by name and alias.
pub struct Registry {
    slots: Vec<Arc<ModelSlot>>,
    routes: DashMap<String, Arc<ModelSlot>>,
}

impl Registry {
    /// Builds the routing table (names and aliases were checked unique by the config).
    pub fn new(models: &[ModelSettings]) -> Self {
        let routes = DashMap::new();
        let mut slots = Vec::new();
        for settings in models {
            let slot = Arc::new(ModelSlot::new(settings.clone()));
            for id in std::iter::once(&settings.name).chain(&settings.aliases) {
                routes.insert(id.clone(), slot.clone());
            }
            slots.push(slot);
        }
        Self { slots, routes }
    }

    /// The model a client's `model` field names.
    pub fn resolve(&self, id: &str) -> Result<Arc<ModelSlot>, ApiError> {
        self.routes
            .get(id)
            .map(|s| s.clone())
            .ok_or_else(|| ApiError::ModelNotFound(id.chars().take(128).collect()))
    }

    /// Every model, in configuration order.
    pub fn slots(&self) -> &[Arc<ModelSlot>] {
        &self.slots
    }
}
