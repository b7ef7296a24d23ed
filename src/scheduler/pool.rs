//! The model pool: which models are loaded, inside which memory budgets, and who may use
//! them. One lock guards every model's lifecycle so that eviction decisions are atomic:
//!
//! ```text
//! Unloaded ──first request──▶ Loading ──▶ Ready ──fairness bound / admin unload──▶ Draining
//!    ▲                          │           │ idle: LRU eviction, keep_alive         │ last request done
//!    └──────────────────────────┴── Failed ◀┘ (load error; retried by a later request)┘
//! ```
//!
//! Policy (no thrashing, no starvation):
//! - A request for an unloaded model reserves its estimated footprint on its device. If it
//!   does not fit, idle models (no running or queued requests, not pinned) are evicted,
//!   least recently used first. If it cannot fit even with every unpinned model gone, the
//!   request gets 503 `insufficient_memory` at once.
//! - If it would fit once busy models finish, the request waits and each of those models
//!   becomes *contended*: it admits at most `fairness_batch` more requests, then drains
//!   (admits none, finishes what runs) and is evicted. So two busy models that do not fit
//!   together take turns in batches of at least `fairness_batch` requests, instead of a
//!   load per request, and neither waits for more than one batch of the other.
//! - Pinned models load at start and are never evicted; `keep_alive` unloads idle models.
//! - A model's footprint is computed once (off the async threads, never under the lock)
//!   and again only when its file changed. A hub model whose file is not downloaded yet
//!   reserves the device's whole budget (beside pinned models) until it is loaded, then
//!   its real footprint.
//! - A load that takes longer than `load_timeout_secs` fails its requests, but its memory
//!   stays reserved until the loader has really ended.
//! - A failed load is retried only after a capped exponential backoff
//!   ([`RETRY_FIRST`] doubling up to [`RETRY_MAX`]); meanwhile requests get the stored
//!   error at once (503 with `Retry-After`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use crate::memory::{
    ByteSize, ContextScale, Footprint, CONTEXT_STEP, DEFAULT_CPU_FRACTION, DEFAULT_GPU_FRACTION,
    MIN_FITTED_CONTEXT,
};

/// Wait before the first retry of a failed load.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between retries of a failing load.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// Backoff after `failures` consecutive failed loads.
fn backoff(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

/// What identifies a version of a model's file: its length and modification time.
type FileStamp = Option<(u64, SystemTime)>;

fn file_stamp(settings: &crate::config::ModelSettings) -> FileStamp {
    let path = match &settings.source {
        crate::config::ModelSource::File(path) => path.clone(),
        _ => return None,
    };
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}
use super::registry::ModelSlot;
use super::SchedulerError;
use crate::config::{GpuLayers, ModelSettings, SchedulerSettings};
use crate::engine::{Engine, LoadedModel};
use crate::metrics::Metrics;

/// Where a model is in its lifecycle.
#[derive(Clone)]
enum Life {
    Unloaded,
    Loading { generation: u64 },
    Ready(Arc<dyn LoadedModel>),
    Draining(Arc<dyn LoadedModel>),
    Failed { error: String, generation: u64 },
}

struct Entry {
    life: Life,
    /// Leases held (requests admitted to this model and not finished).
    active: usize,
    /// Requests waiting in `acquire` for this model.
    waiting: usize,
    last_used: Instant,
    /// Bytes counted against the device while Loading, Ready or Draining.
    reserved: u64,
    /// For a model split between a GPU and the CPU: the bytes counted against the CPU
    /// (its layers there), beside `reserved` on the GPU.
    spill: u64,
    /// For a model split over several GPUs: the bytes on each GPU but its main one.
    extra: Vec<(String, u64)>,
    /// For such a model: the layers on the GPU at its last load.
    offloaded: Option<u32>,
    /// Admissions since another model started waiting for this one's memory.
    contended_admissions: Option<usize>,
    load_generation: u64,
    loaded_at: Option<SystemTime>,
    /// Consecutive failed loads.
    failures: u32,
    /// Until when a failed model answers with its stored error instead of reloading.
    retry_at: Option<Instant>,
    /// A loader that timed out is still running: its reservation stays until it ends.
    abandoned_loader: bool,
    /// The footprint and the file version it was computed for.
    footprint: Option<(FileStamp, Result<Sizing, String>)>,
    /// The context chosen to fit the device at the last load (and the trained one),
    /// for a model without a configured `context_length`.
    fitted_context: Option<(u64, u64)>,
    /// Removed or replaced: admits nothing, unloads when idle.
    retired: bool,
}

/// A model's footprint at its configured (or trained) context, and how it scales when
/// its context is the pool's to choose.
#[derive(Debug, Clone)]
struct Sizing {
    full: Footprint,
    scale: Option<ContextScale>,
    /// All its layers, when its engine can split it between its GPU and the CPU.
    layers: Option<u32>,
    /// With several GPUs: each one's key (main first) and the weight its share of the
    /// offloaded layers is proportional to.
    spread: Vec<(String, f64)>,
}

impl Sizing {
    /// The bytes on each device of `reserve` with `on_gpu` of its `layers` offloaded:
    /// the GPU's (or each GPU's, main first) and the CPU's.
    fn place(&self, reserve: &Footprint, layers: u32, on_gpu: u32) -> (Vec<u64>, u64) {
        let shares = if self.spread.len() > 1 {
            let weights: Vec<f64> = self.spread.iter().map(|(_, w)| *w).collect();
            crate::memory::layer_shares(&weights, on_gpu)
        } else {
            vec![on_gpu]
        };
        reserve.split_over(layers, &shares)
    }

    /// Computes the sizing of `settings` with the engine's estimate (blocking: reads the
    /// GGUF header).
    fn estimate(
        engine: &dyn Engine,
        settings: &crate::config::ModelSettings,
    ) -> Result<Self, String> {
        let full = engine.estimate_footprint(settings)?;
        let local = matches!(settings.source, crate::config::ModelSource::File(_));
        let scalable = local && settings.context_length.is_none() && settings.memory.is_none();
        let scale = scalable
            .then(|| {
                let at = |context: u64| {
                    let mut s = settings.clone();
                    s.context_length = Some(context as usize);
                    engine.estimate_footprint(&s).ok()
                };
                let floor = at(MIN_FITTED_CONTEXT)?;
                let above = at(MIN_FITTED_CONTEXT + CONTEXT_STEP)?;
                let per_step = above.total().saturating_sub(floor.total());
                if per_step == 0 || full.kv_cache <= floor.kv_cache {
                    return None;
                }
                // The KV cache is linear in the context: the trained context from the full one.
                let extra = u128::from(full.kv_cache - floor.kv_cache) * u128::from(CONTEXT_STEP)
                    / u128::from(per_step);
                let trained =
                    MIN_FITTED_CONTEXT.saturating_add(extra.min(u128::from(u64::MAX)) as u64);
                ContextScale::from_samples(trained, floor, above)
            })
            .flatten();
        let layers = if full.is_unknown() {
            None
        } else {
            engine.offload_layers(settings)
        };
        let spread = if layers.is_some() {
            engine.offload_split(settings)
        } else {
            Vec::new()
        };
        Ok(Self {
            full,
            scale,
            layers,
            spread,
        })
    }

    /// What to reserve within `available` bytes, and the context chosen when the trained
    /// one does not fit and the context is the pool's to choose (`(context, trained)`).
    /// When not even the floor fits, the floor's footprint (the caller refuses it).
    fn fit(&self, available: u64) -> (Footprint, Option<(u64, u64)>) {
        match self.scale {
            Some(scale) if self.full.total() > available => match scale.fit(available) {
                Some(context) => (scale.at(context), Some((context, scale.trained))),
                None => (scale.at_floor, None),
            },
            _ => (self.full, None),
        }
    }
}

impl Entry {
    /// The bytes it holds on `device`, its own device being `own`.
    fn held_on(&self, own: &str, device: &str) -> u64 {
        let on_own = if own == device { self.reserved } else { 0 };
        let spilled = if device == "cpu" { self.spill } else { 0 };
        let elsewhere: u64 = self
            .extra
            .iter()
            .filter(|(d, _)| d == device)
            .map(|(_, b)| *b)
            .sum();
        on_own.saturating_add(spilled).saturating_add(elsewhere)
    }

    /// Frees everything it holds.
    fn free(&mut self) {
        self.reserved = 0;
        self.spill = 0;
        self.extra.clear();
    }

    /// Marks load `generation` failed with `error` and starts its retry backoff; the wait.
    fn fail(&mut self, error: String, generation: u64) -> Duration {
        self.life = Life::Failed { error, generation };
        self.failures += 1;
        let wait = backoff(self.failures);
        self.retry_at = Some(Instant::now() + wait);
        wait
    }

    /// How long until the next load attempt (at least [`RETRY_FIRST`]).
    fn retry_after(&self) -> Duration {
        self.retry_at
            .map_or(RETRY_FIRST, |t| t.saturating_duration_since(Instant::now()))
            .max(RETRY_FIRST)
    }
}

struct State {
    entries: Vec<Entry>,
    /// The slot of each entry, by index.
    slots: Vec<Arc<ModelSlot>>,
    /// Memory budget of each device a model was added for.
    budgets: HashMap<String, u64>,
}

/// A snapshot of one model, for `/v1/models`, admin and metrics.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    /// `unloaded`, `loading`, `ready`, `draining` or `failed`.
    pub status: &'static str,
    /// Known once loaded.
    pub context_length: Option<usize>,
    /// Length of its embeddings, for a loaded embedding model.
    pub embedding_length: Option<usize>,
    /// Where it runs, once loaded.
    pub device: Option<String>,
    /// Once loaded on a GPU with llama.cpp: layers there, and all its layers.
    pub gpu_layers: Option<(u32, u32)>,
    /// When it became ready.
    pub loaded_at: Option<SystemTime>,
    /// The last load error, when failed.
    pub error: Option<String>,
    /// Bytes reserved for it now.
    pub reserved_bytes: u64,
    /// Requests holding it.
    pub active: usize,
    /// While loading or loaded: the context chosen to fit its device and the model's
    /// trained one, when `context_length` is not configured and the trained one did not fit.
    pub fitted_context: Option<(u64, u64)>,
    /// For a loaded pool of upstream servers: each member and where it stands.
    pub upstreams: Vec<crate::engine::upstream_pool::MemberStatus>,
}

/// Memory budget and use of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMemory {
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    /// Bytes models may use.
    pub budget: u64,
    /// Bytes reserved by loading and loaded models.
    pub used: u64,
    /// Each model holding some of it, and its bytes there (a model split between a GPU
    /// and the CPU is listed on both).
    pub models: Vec<(String, u64)>,
}

/// The models, their lifecycles and the memory they hold.
pub struct Pool {
    engine: Arc<dyn Engine>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    changed: Notify,
    settings: SchedulerSettings,
    max_loaded: Option<usize>,
    fairness_batch: usize,
    /// Whether the idle-unload ticker runs (started with the first model that has a
    /// `keep_alive`).
    ticking: std::sync::atomic::AtomicBool,
    /// Whether `start` ran: models added later start their own background work.
    started: std::sync::atomic::AtomicBool,
}

/// A model held for one request; dropping it tells the pool the request is over.
pub struct Lease {
    pool: Arc<Pool>,
    index: usize,
    model: Arc<dyn LoadedModel>,
}

impl Lease {
    /// The loaded model.
    pub fn model(&self) -> &Arc<dyn LoadedModel> {
        &self.model
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(self.index);
    }
}

enum Step {
    Leased(Arc<dyn LoadedModel>),
    Wait,
    /// The model must be loaded and its footprint checked against its file first.
    NeedFootprint,
}

/// Counts a request as waiting for its model while it is in `acquire`.
struct WaitingGuard<'a> {
    pool: &'a Pool,
    index: usize,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.pool.lock();
        st.entries[self.index].waiting -= 1;
        drop(st);
        self.pool.changed.notify_waiters();
    }
}

impl Pool {
    /// A pool over `slots`, with budgets from `settings` (or the machine's memory).
    pub fn new(
        slots: Vec<Arc<ModelSlot>>,
        engine: Arc<dyn Engine>,
        metrics: Arc<Metrics>,
        settings: &SchedulerSettings,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            engine,
            metrics,
            state: Mutex::new(State {
                entries: Vec::new(),
                slots: Vec::new(),
                budgets: HashMap::new(),
            }),
            changed: Notify::new(),
            settings: settings.clone(),
            max_loaded: settings.max_loaded_models,
            fairness_batch: settings.fairness_batch.max(1),
            ticking: std::sync::atomic::AtomicBool::new(false),
            started: std::sync::atomic::AtomicBool::new(false),
        });
        for slot in slots {
            pool.insert(slot);
        }
        pool
    }

    /// The memory budget of `device`: configured, or a share of its memory.
    fn budget_for(&self, device: &str) -> u64 {
        if device == crate::memory::REMOTE_DEVICE {
            return u64::MAX;
        }
        let is_cpu = device == "cpu";
        let configured = if is_cpu {
            self.settings.cpu_memory_budget
        } else {
            self.settings.gpu_memory_budget
        };
        let budget = match configured {
            Some(ByteSize(b)) => b,
            None => {
                let total = if is_cpu {
                    crate::memory::system_memory_bytes()
                        .or_else(|| self.engine.device_memory(device))
                } else {
                    self.engine.device_memory(device)
                };
                let fraction = if is_cpu {
                    DEFAULT_CPU_FRACTION
                } else {
                    DEFAULT_GPU_FRACTION
                };
                total.map_or(u64::MAX, |t| (t as f64 * fraction) as u64)
            }
        };
        tracing::info!(device = %device, budget = %ByteSize(budget), "memory budget");
        self.metrics
            .memory_budget_bytes
            .with_label_values(&[device])
            .set(budget.min(i64::MAX as u64) as i64);
        budget
    }

    /// Adds `slot` (its index is the next one) without starting anything.
    fn insert(&self, slot: Arc<ModelSlot>) {
        // Its device's budget, and the CPU's for a model on a GPU (a model split between
        // them holds some of each).
        let mut devices = vec![slot.device_key.clone()];
        if slot.device_key != crate::memory::REMOTE_DEVICE {
            devices.push("cpu".into());
            // The other GPUs of a model split over several.
            devices.extend(slot.settings.devices.iter().map(|d| d.to_string()));
        }
        let unknown: Vec<String> = {
            let st = self.lock();
            devices
                .into_iter()
                .filter(|d| !st.budgets.contains_key(d))
                .collect()
        };
        let budgets: Vec<(String, u64)> = unknown
            .into_iter()
            .map(|d| {
                let budget = self.budget_for(&d);
                (d, budget)
            })
            .collect();
        let mut st = self.lock();
        for (device, budget) in budgets {
            st.budgets.entry(device).or_insert(budget);
        }
        debug_assert_eq!(slot.index, st.entries.len());
        st.slots.push(slot);
        st.entries.push(Entry {
            life: Life::Unloaded,
            active: 0,
            waiting: 0,
            last_used: Instant::now(),
            reserved: 0,
            spill: 0,
            extra: Vec::new(),
            offloaded: None,
            contended_admissions: None,
            load_generation: 0,
            loaded_at: None,
            failures: 0,
            retry_at: None,
            abandoned_loader: false,
            footprint: None,
            fitted_context: None,
            retired: false,
        });
    }

    /// Adds a model at run time: its footprint is computed, and a pinned one loads.
    pub fn add(self: &Arc<Self>, slot: Arc<ModelSlot>) {
        self.insert(slot.clone());
        if self.started.load(std::sync::atomic::Ordering::Acquire) {
            self.start_slot(&slot);
        }
        self.changed.notify_waiters();
    }

    /// Retires model `index` (removed or replaced): it admits no new request; what runs
    /// on it finishes, then it unloads. A load in progress is dropped when it ends.
    pub fn retire(&self, index: usize) {
        let mut st = self.lock();
        let Some(e) = st.entries.get_mut(index) else {
            return;
        };
        e.retired = true;
        let name = st.slots[index].settings.name.clone();
        let e = &mut st.entries[index];
        match &e.life {
            Life::Ready(m) if e.active > 0 => {
                tracing::info!(model = %name, running = e.active, "model removed: draining");
                e.life = Life::Draining(m.clone());
            }
            Life::Ready(_) | Life::Draining(_) if e.active == 0 => {
                self.unload_locked(&mut st, index)
            }
            Life::Failed { .. } | Life::Unloaded if !e.abandoned_loader => e.free(),
            _ => {}
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// The slot at `index`.
    fn slot(&self, index: usize) -> Arc<ModelSlot> {
        self.lock().slots[index].clone()
    }

    /// `settings` with the local file of its `draft` model filled in: a live model of
    /// that name with a GGUF file here (a hub model once downloaded). Left empty when
    /// there is none; the engine then refuses the load and says why. Blocking: looks in
    /// the hub cache.
    fn with_draft(&self, mut settings: ModelSettings) -> ModelSettings {
        let Some(name) = &settings.draft else {
            return settings;
        };
        let draft = self
            .lock()
            .slots
            .iter()
            .find(|s| !s.is_retired() && &s.settings.name == name)
            .cloned();
        settings.draft_file =
            draft.and_then(
                |slot| match crate::hub::with_cached_file(&slot.settings).source {
                    crate::config::ModelSource::File(path) => Some(path),
                    _ => None,
                },
            );
        settings
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the background work: loading pinned models and unloading idle ones.
    pub fn start(self: &Arc<Self>) {
        self.started
            .store(true, std::sync::atomic::Ordering::Release);
        let slots = self.lock().slots.clone();
        for slot in &slots {
            self.start_slot(slot);
        }
    }

    /// Background work of one model: its footprint, its load when pinned, the idle ticker
    /// when it has a `keep_alive`.
    fn start_slot(self: &Arc<Self>, slot: &Arc<ModelSlot>) {
        let pool = self.clone();
        let index = slot.index;
        tokio::spawn(async move { pool.refresh_footprint(index).await });
        // A pool of upstream servers loads at once (nothing to read): its members are
        // health-checked and shown from the start.
        if slot.settings.pinned || !slot.settings.sources.is_empty() {
            let pool = self.clone();
            let timeout = slot.settings.load_timeout() + Duration::from_secs(5);
            tokio::spawn(async move {
                let _ = pool.acquire(index, Instant::now() + timeout).await;
            });
        }
        if slot.settings.keep_alive.is_some()
            && !self.ticking.swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let pool = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    let Some(pool) = pool.upgrade() else { break };
                    pool.expire_idle();
                }
            });
        }
    }

    /// Each model's state now.
    pub fn status(&self, index: usize) -> ModelStatus {
        let st = self.lock();
        let e = &st.entries[index];
        let (status, model, error) = match &e.life {
            Life::Unloaded => ("unloaded", None, None),
            Life::Loading { .. } => ("loading", None, None),
            Life::Ready(m) => ("ready", Some(m), None),
            Life::Draining(m) => ("draining", Some(m), None),
            Life::Failed { error, .. } => ("failed", None, Some(error.clone())),
        };
        ModelStatus {
            upstreams: model.map(|m| m.upstreams()).unwrap_or_default(),
            status,
            context_length: model.and_then(|m| m.facts().context_length),
            embedding_length: model.and_then(|m| m.facts().embedding_length),
            device: model.map(|m| m.facts().device.clone()),
            gpu_layers: model.and_then(|m| m.facts().gpu_layers),
            loaded_at: model.and(e.loaded_at),
            error,
            reserved_bytes: e
                .reserved
                .saturating_add(e.spill)
                .saturating_add(e.extra.iter().map(|(_, b)| *b).sum::<u64>()),
            active: e.active,
            fitted_context: e.fitted_context.filter(|_| {
                matches!(
                    e.life,
                    Life::Loading { .. } | Life::Ready(_) | Life::Draining(_)
                )
            }),
        }
    }

    /// Budget and use of every device.
    pub fn memory(&self) -> Vec<DeviceMemory> {
        let st = self.lock();
        let mut out: Vec<DeviceMemory> = st
            .budgets
            .iter()
            .map(|(device, budget)| DeviceMemory {
                device: device.clone(),
                budget: *budget,
                used: self.used_on(&st, device),
                models: st
                    .entries
                    .iter()
                    .zip(&st.slots)
                    .map(|(e, s)| (s.settings.name.clone(), e.held_on(&s.device_key, device)))
                    .filter(|(_, bytes)| *bytes > 0)
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.device.cmp(&b.device));
        out
    }

    fn used_on(&self, st: &State, device: &str) -> u64 {
        st.entries
            .iter()
            .zip(&st.slots)
            .map(|(e, s)| e.held_on(&s.device_key, device))
            .sum()
    }

    /// What the pinned models other than `index` hold on `device`.
    fn pinned_on(st: &State, device: &str, index: usize) -> u64 {
        st.entries
            .iter()
            .zip(&st.slots)
            .filter(|(_, s)| s.settings.pinned && s.index != index)
            .map(|(e, s)| e.held_on(&s.device_key, device))
            .sum()
    }

    /// Whether model `i` is idle and may be evicted to make room.
    fn evictable(st: &State, i: usize) -> bool {
        let e = &st.entries[i];
        !st.slots[i].settings.pinned
            && e.active == 0
            && matches!(e.life, Life::Ready(_) | Life::Draining(_))
    }

    /// The budget of `device` (unlimited when no model was added for it).
    fn budget_of(st: &State, device: &str) -> u64 {
        st.budgets.get(device).copied().unwrap_or(u64::MAX)
    }

    /// Whether a request of another model is waiting for room (it is not loaded).
    fn someone_waits_for_room(&self, st: &State, index: usize) -> bool {
        st.entries.iter().enumerate().any(|(i, e)| {
            i != index && e.waiting > 0 && matches!(e.life, Life::Unloaded | Life::Failed { .. })
        })
    }

    fn loaded_count(st: &State) -> usize {
        st.entries
            .iter()
            .filter(|e| {
                matches!(
                    e.life,
                    Life::Loading { .. } | Life::Ready(_) | Life::Draining(_)
                )
            })
            .count()
    }

    /// Waits until model `index` is ready and admits one request to it, loading it (and
    /// evicting or draining others) as needed, until `deadline`.
    pub async fn acquire(
        self: &Arc<Self>,
        index: usize,
        deadline: Instant,
    ) -> Result<Lease, SchedulerError> {
        {
            self.lock().entries[index].waiting += 1;
        }
        let _waiting = WaitingGuard { pool: self, index };
        let mut awaited_load: Option<u64> = None;
        let mut checked_file = false;
        let started = Instant::now();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = {
                let mut st = self.lock();
                self.step(&mut st, index, &mut awaited_load, checked_file)?
            };
            match step {
                Step::NeedFootprint => {
                    self.refresh_footprint(index).await;
                    checked_file = true;
                }
                Step::Leased(model) => {
                    return Ok(Lease {
                        pool: self.clone(),
                        index,
                        model,
                    })
                }
                Step::Wait => {
                    if tokio::time::timeout_at(deadline.into(), notified)
                        .await
                        .is_err()
                    {
                        return Err(SchedulerError::QueueTimeout {
                            model: self.slot(index).settings.name.clone(),
                            waited: started.elapsed(),
                            retry_after: Duration::from_secs(5),
                        });
                    }
                }
            }
        }
    }

    /// Computes model `index`'s footprint on a blocking thread (reading the GGUF header
    /// walks its whole vocabulary), unless its file is unchanged since the last time.
    async fn refresh_footprint(self: &Arc<Self>, index: usize) {
        let pool = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            // A hub model's footprint comes from its cached file, once downloaded.
            let settings =
                &pool.with_draft(crate::hub::with_cached_file(&pool.slot(index).settings));
            let stamp = file_stamp(settings);
            let known = pool.lock().entries[index]
                .footprint
                .as_ref()
                .is_some_and(|(s, f)| *s == stamp && stamp.is_some() && f.is_ok());
            if known {
                return;
            }
            let sizing = Sizing::estimate(pool.engine.as_ref(), settings);
            pool.lock().entries[index].footprint = Some((stamp, sizing));
        })
        .await;
    }

    /// One decision for a request of model `index`, under the lock.
    fn step(
        self: &Arc<Self>,
        st: &mut State,
        index: usize,
        awaited_load: &mut Option<u64>,
        checked_file: bool,
    ) -> Result<Step, SchedulerError> {
        let slot = st.slots[index].clone();
        let name = &slot.settings.name;
        let fairness = self.fairness_batch;
        let someone_waits = self.someone_waits_for_room(st, index);
        let e = &mut st.entries[index];
        if e.retired {
            return Err(SchedulerError::ModelRemoved(name.clone()));
        }
        match &e.life {
            Life::Ready(model) => {
                let model = model.clone();
                e.contended_admissions = match (someone_waits, e.contended_admissions) {
                    (false, _) => None,
                    (true, None) if !slot.settings.pinned => Some(0),
                    (true, counted) => counted,
                };
                if let Some(admitted) = e.contended_admissions {
                    if admitted >= fairness {
                        tracing::info!(model = %name, "fairness bound reached: draining to make room");
                        e.life = Life::Draining(model);
                        return Ok(Step::Wait);
                    }
                    e.contended_admissions = Some(admitted + 1);
                }
                e.active += 1;
                e.last_used = Instant::now();
                return Ok(Step::Leased(model));
            }
            Life::Draining(_) => return Ok(Step::Wait),
            Life::Loading { generation } => {
                *awaited_load = Some(*generation);
                return Ok(Step::Wait);
            }
            Life::Failed { error, generation } if *awaited_load == Some(*generation) => {
                return Err(SchedulerError::ModelLoadFailed {
                    model: name.clone(),
                    reason: error.clone(),
                    retry_after: e.retry_after(),
                });
            }
            Life::Failed { error, .. }
                if e.abandoned_loader || e.retry_at.is_some_and(|t| t > Instant::now()) =>
            {
                return Err(SchedulerError::ModelLoadFailed {
                    model: name.clone(),
                    reason: error.clone(),
                    retry_after: e.retry_after(),
                });
            }
            Life::Unloaded | Life::Failed { .. } => {}
        }

        // Not loaded: find room for it, with a footprint checked against its file.
        let footprint = match (&e.footprint, checked_file) {
            (Some((_, footprint)), true) => footprint.clone(),
            _ => return Ok(Step::NeedFootprint),
        };
        let sizing = match footprint {
            Ok(s) => s,
            Err(error) => {
                e.load_generation += 1;
                let wait = e.fail(error.clone(), e.load_generation);
                self.metrics
                    .model_load_failures
                    .with_label_values(&[name])
                    .inc();
                return Err(SchedulerError::ModelLoadFailed {
                    model: name.clone(),
                    reason: error,
                    retry_after: wait,
                });
            }
        };
        let device = slot.device_key.as_str();
        let budget = Self::budget_of(st, device);
        let available = budget.saturating_sub(Self::pinned_on(st, device, index));
        let footprint = sizing.full;
        // What it needs on each device: its own, and the CPU's share of a split model.
        let mut needs: Vec<(&str, u64)> = Vec::with_capacity(2);
        let mut offloaded = None;
        let mut fitted = None;
        match sizing.layers {
            // A hub file not downloaded yet: its size is unknown, so it may need everything.
            _ if footprint.is_unknown() => needs.push((device, available)),
            None => {
                let (reserve, f) = sizing.fit(available);
                fitted = f;
                needs.push((device, reserve.total()));
            }
            // A model split between a GPU and the CPU: its context fits both together;
            // `auto` puts as many layers on the GPU as it holds beside the models that
            // stay there (pinned or busy: idle ones are evicted), the rest on the CPU.
            Some(layers) => {
                // Its GPUs: the one of `device`, or each of `devices` (main first).
                let gpus: Vec<&str> = if sizing.spread.len() > 1 {
                    sizing.spread.iter().map(|(d, _)| d.as_str()).collect()
                } else {
                    vec![device]
                };
                let gpus_available: u64 = gpus
                    .iter()
                    .map(|d| Self::budget_of(st, d).saturating_sub(Self::pinned_on(st, d, index)))
                    .sum();
                let cpu_available =
                    Self::budget_of(st, "cpu").saturating_sub(Self::pinned_on(st, "cpu", index));
                let (reserve, f) = sizing.fit(gpus_available.saturating_add(cpu_available));
                fitted = f;
                let on_gpu = match slot.settings.gpu_layers {
                    GpuLayers::Count(n) => n.min(layers),
                    GpuLayers::Auto => {
                        let rooms: Vec<u64> = gpus
                            .iter()
                            .map(|&d| {
                                let staying: u64 = (0..st.slots.len())
                                    .filter(|&i| i != index && !Self::evictable(st, i))
                                    .map(|i| st.entries[i].held_on(&st.slots[i].device_key, d))
                                    .sum();
                                Self::budget_of(st, d).saturating_sub(staying)
                            })
                            .collect();
                        (0..=layers)
                            .rev()
                            .find(|&n| {
                                let (on, _) = sizing.place(&reserve, layers, n);
                                on.iter().zip(&rooms).all(|(b, room)| b <= room)
                            })
                            .unwrap_or(0)
                    }
                };
                let (on, cpu) = sizing.place(&reserve, layers, on_gpu);
                for (k, (&d, bytes)) in gpus.iter().zip(on).enumerate() {
                    if k == 0 || bytes > 0 {
                        needs.push((d, bytes));
                    }
                }
                if cpu > 0 {
                    needs.push(("cpu", cpu));
                }
                offloaded = Some(on_gpu);
            }
        }
        // Pinned models never leave: if they alone leave no room (memory or model
        // count), this model can never load.
        let pinned_loaded = st
            .entries
            .iter()
            .zip(&st.slots)
            .filter(|(e, s)| {
                s.settings.pinned && !matches!(e.life, Life::Unloaded | Life::Failed { .. })
            })
            .count();
        let too_big = needs.iter().copied().find(|&(d, need)| {
            need > Self::budget_of(st, d).saturating_sub(Self::pinned_on(st, d, index))
        });
        let no_slot_beside_pinned = self.max_loaded.is_some_and(|max| pinned_loaded >= max);
        if too_big.is_some() || no_slot_beside_pinned {
            let (d, need) = too_big.unwrap_or(needs[0]);
            self.metrics
                .rejected_requests
                .with_label_values(&[name, "insufficient_memory"])
                .inc();
            return Err(SchedulerError::InsufficientMemory {
                model: name.clone(),
                device: d.to_string(),
                needed: need,
                budget: Self::budget_of(st, d),
                pinned: Self::pinned_on(st, d, index),
            });
        }

        // Evict idle models, least recently used first, until it fits on every device.
        let freed_on = |freed: &[u64], d: usize| freed.get(d).copied().unwrap_or(0);
        let fits = |st: &State, freed: &[u64], extra_slots: usize| {
            let count_ok = self
                .max_loaded
                .is_none_or(|max| Self::loaded_count(st).saturating_sub(extra_slots) < max);
            count_ok
                && needs.iter().enumerate().all(|(k, &(d, need))| {
                    self.used_on(st, d)
                        .saturating_sub(freed_on(freed, k))
                        .saturating_add(need)
                        <= Self::budget_of(st, d)
                })
        };
        let holds_needed = |st: &State, i: usize| {
            needs
                .iter()
                .any(|&(d, _)| st.entries[i].held_on(&st.slots[i].device_key, d) > 0)
        };
        if !fits(st, &[], 0) {
            let mut idle: Vec<usize> = (0..st.slots.len())
                .filter(|&i| i != index && Self::evictable(st, i))
                .collect();
            idle.sort_by_key(|&i| st.entries[i].last_used);
            let mut chosen = Vec::new();
            let mut freed = vec![0u64; needs.len()];
            for i in idle {
                if fits(st, &freed, chosen.len()) {
                    break;
                }
                let counts_for_memory = holds_needed(st, i);
                let counts_for_slots = self
                    .max_loaded
                    .is_some_and(|max| Self::loaded_count(st).saturating_sub(chosen.len()) >= max);
                if counts_for_memory || counts_for_slots {
                    for (k, &(d, _)) in needs.iter().enumerate() {
                        freed[k] += st.entries[i].held_on(&st.slots[i].device_key, d);
                    }
                    chosen.push(i);
                }
            }
            if fits(st, &freed, chosen.len()) {
                for i in chosen {
                    let evicted = st.slots[i].settings.name.clone();
                    tracing::info!(evicted = %evicted, for_model = %name, "evicting idle model to make room");
                    self.metrics
                        .model_evictions
                        .with_label_values(&[evicted.as_str()])
                        .inc();
                    self.metrics.model_swaps.inc();
                    self.unload_locked(st, i);
                }
            } else {
                // Busy models hold the memory: make them take turns.
                for i in 0..st.slots.len() {
                    let same_device = holds_needed(st, i) || self.max_loaded.is_some();
                    let pinned = st.slots[i].settings.pinned;
                    let other = &mut st.entries[i];
                    if i != index
                        && same_device
                        && !pinned
                        && matches!(other.life, Life::Ready(_))
                        && other.contended_admissions.is_none()
                    {
                        other.contended_admissions = Some(0);
                    }
                }
                return Ok(Step::Wait);
            }
        }

        // Room is there: reserve it and load.
        let need = needs[0].1;
        let spill = needs[1..]
            .iter()
            .find(|(d, _)| *d == "cpu")
            .map_or(0, |&(_, cpu)| cpu);
        let extra: Vec<(String, u64)> = needs[1..]
            .iter()
            .filter(|(d, _)| *d != "cpu")
            .map(|&(d, bytes)| (d.to_string(), bytes))
            .collect();
        let e = &mut st.entries[index];
        e.load_generation += 1;
        let generation = e.load_generation;
        e.life = Life::Loading { generation };
        e.reserved = need;
        e.spill = spill;
        e.extra = extra;
        e.offloaded = offloaded;
        e.fitted_context = fitted;
        *awaited_load = Some(generation);
        if let Some((context, trained)) = fitted {
            tracing::info!(model = %name, context_length = context, trained_context_length = trained, device, available = %ByteSize(available), "context shrunk to fit the memory budget (context_length is not configured)");
        }
        let mut settings = slot.settings.clone();
        if let Some((context, _)) = fitted {
            settings.context_length = Some(context as usize);
        }
        if let (Some(on_gpu), Some(layers)) = (offloaded, sizing.layers) {
            tracing::info!(model = %name, device, gpu_layers = on_gpu, layers, gpu = %ByteSize(need), cpu = %ByteSize(spill), other_gpus = ?st.entries[index].extra, "layers placed");
            // A configured count goes as written (the engine refuses one above the
            // model's layers, with the numbers).
            if slot.settings.gpu_layers == GpuLayers::Auto {
                settings.gpu_layers = GpuLayers::Count(on_gpu);
            }
        }
        self.spawn_load(settings, index, generation, need, footprint.is_unknown());
        Ok(Step::Wait)
    }

    /// Loads model `index` in a task of its own. Past `load_timeout_secs` its requests
    /// fail, but the reservation stays until the engine's loader has really ended.
    fn spawn_load(
        self: &Arc<Self>,
        settings: crate::config::ModelSettings,
        index: usize,
        generation: u64,
        need: u64,
        unknown: bool,
    ) {
        let pool = self.clone();
        tracing::info!(model = %settings.name, source = %settings.source, footprint = %ByteSize(need), "loading model");
        tokio::spawn(async move {
            let started = Instant::now();
            let engine = pool.engine.clone();
            let load = async {
                // A hub model is downloaded first (inside the load timeout).
                let local = crate::hub::fetch(&settings)
                    .await
                    .map_err(crate::engine::EngineError::Load)?;
                // Its draft model's file (a stat of the hub cache: off the async threads).
                let mut local = {
                    let pool = pool.clone();
                    tokio::task::spawn_blocking(move || pool.with_draft(local))
                        .await
                        .map_err(|_| crate::engine::EngineError::Unavailable)?
                };
                if unknown {
                    // Its size is known now: shrink its context into what was reserved.
                    pool.lock().entries[index].footprint = None;
                    pool.refresh_footprint(index).await;
                    let mut st = pool.lock();
                    let e = &mut st.entries[index];
                    if let Some((_, Ok(sizing))) = &e.footprint {
                        let (reserve, fitted) = sizing.fit(need);
                        if let Some((context, _)) = fitted {
                            local.context_length = Some(context as usize);
                            e.fitted_context = fitted;
                        }
                        // A model that can be split: as many layers on the GPU as were
                        // reserved there, unless configured.
                        if let Some(layers) = sizing.layers {
                            let on_gpu = match local.gpu_layers {
                                GpuLayers::Count(n) => n.min(layers),
                                GpuLayers::Auto => {
                                    let fit = (0..=layers)
                                        .rev()
                                        .find(|&n| reserve.split(layers, n).0 <= need)
                                        .unwrap_or(0);
                                    local.gpu_layers = GpuLayers::Count(fit);
                                    fit
                                }
                            };
                            e.offloaded = Some(on_gpu);
                        }
                    }
                }
                engine.load(&local).await
            };
            tokio::pin!(load);
            let result = match tokio::time::timeout(settings.load_timeout(), &mut load).await {
                Ok(result) => result,
                Err(_) => {
                    let error = format!(
                        "loading took longer than {} s (load_timeout_secs)",
                        settings.load_timeout_secs
                    );
                    tracing::warn!(model = %settings.name, "{error}; its memory stays reserved until the loader ends");
                    pool.fail_load(index, generation, error, true);
                    let late = load.await;
                    drop(late);
                    let mut st = pool.lock();
                    let e = &mut st.entries[index];
                    e.abandoned_loader = false;
                    if matches!(e.life, Life::Failed { generation: g, .. } if g == generation) {
                        e.free();
                    }
                    drop(st);
                    tracing::info!(model = %settings.name, "the timed-out loader ended; its memory is free");
                    pool.changed.notify_waiters();
                    return;
                }
            };
            let seconds = started.elapsed().as_secs_f64();
            // An engine that knows the size only once loaded: ask again now.
            let still_unknown = unknown
                && result.is_ok()
                && matches!(&pool.lock().entries[index].footprint, Some((_, Ok(s))) if s.full.is_unknown());
            if still_unknown {
                pool.lock().entries[index].footprint = None;
                pool.refresh_footprint(index).await;
            }
            let name = settings.name.as_str();
            let mut st = pool.lock();
            let e = &mut st.entries[index];
            if !matches!(e.life, Life::Loading { generation: g } if g == generation) {
                return;
            }
            match result {
                Ok(model) if e.retired => {
                    // Removed while it loaded: nobody may use it.
                    e.life = Life::Unloaded;
                    e.free();
                    drop(st);
                    drop(model);
                    crate::memory::return_freed_memory_soon();
                }
                Ok(model) => {
                    tracing::info!(model = %name, device = %model.facts().device, context_length = ?model.facts().context_length, seconds, "model loaded");
                    pool.metrics.model_loads.with_label_values(&[name]).inc();
                    pool.metrics
                        .model_load_duration
                        .with_label_values(&[name])
                        .observe(seconds);
                    // A hub model's file is there now: reserve what it really takes.
                    if unknown {
                        if let Some((_, Ok(s))) = &e.footprint {
                            let real = match (e.fitted_context, s.scale) {
                                (Some((context, _)), Some(scale)) => scale.at(context),
                                _ => s.full,
                            };
                            match (s.layers, e.offloaded) {
                                _ if real.is_unknown() => {}
                                (Some(layers), Some(on_gpu)) => {
                                    let (on, cpu) = s.place(&real, layers, on_gpu);
                                    e.reserved = on.first().copied().unwrap_or(0);
                                    e.spill = cpu;
                                    e.extra = s
                                        .spread
                                        .iter()
                                        .zip(on)
                                        .skip(1)
                                        .map(|((d, _), bytes)| (d.clone(), bytes))
                                        .collect();
                                }
                                _ => e.reserved = real.total(),
                            }
                        }
                    }
                    e.life = Life::Ready(model);
                    e.loaded_at = Some(SystemTime::now());
                    e.last_used = Instant::now();
                    e.contended_admissions = None;
                    e.failures = 0;
                    e.retry_at = None;
                    drop(st);
                }
                Err(err) => {
                    drop(st);
                    tracing::warn!(model = %name, error = %err, "model load failed");
                    pool.fail_load(index, generation, err.to_string(), false);
                }
            }
            pool.changed.notify_waiters();
        });
    }

    /// Marks load `generation` of model `index` failed and starts its retry backoff. A
    /// loader still `running` keeps its reservation.
    fn fail_load(&self, index: usize, generation: u64, error: String, running: bool) {
        let slot = self.slot(index);
        let name = slot.settings.name.as_str();
        self.metrics
            .model_load_failures
            .with_label_values(&[name])
            .inc();
        let mut st = self.lock();
        let e = &mut st.entries[index];
        if !matches!(e.life, Life::Loading { generation: g } if g == generation) {
            return;
        }
        e.fail(error, generation);
        e.abandoned_loader = running;
        if !running {
            e.free();
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Unloads model `i` (its memory is freed once running requests let go of it).
    fn unload_locked(&self, st: &mut State, i: usize) {
        let e = &mut st.entries[i];
        if matches!(e.life, Life::Ready(_) | Life::Draining(_)) {
            tracing::info!(model = %st.slots[i].settings.name, "model unloaded");
            crate::memory::return_freed_memory_soon();
        }
        if e.abandoned_loader {
            // A timed-out loader still runs: its memory is still taken.
            return;
        }
        e.life = Life::Unloaded;
        e.free();
        e.contended_admissions = None;
        e.loaded_at = None;
    }

    fn release(&self, index: usize) {
        let mut st = self.lock();
        let pinned = st.slots[index].settings.pinned;
        let keep_alive = st.slots[index].settings.keep_alive;
        let e = &mut st.entries[index];
        e.active = e.active.saturating_sub(1);
        e.last_used = Instant::now();
        let idle = e.active == 0;
        let draining = matches!(e.life, Life::Draining(_));
        let unused = idle && e.waiting == 0;
        let expired_now = unused && !pinned && keep_alive.is_some_and(|k| k.0.is_zero());
        if (idle && draining) || expired_now {
            self.unload_locked(&mut st, index);
        }
        drop(st);
        self.changed.notify_waiters();
    }

    fn expire_idle(&self) {
        let mut st = self.lock();
        let mut changed = false;
        for i in 0..st.slots.len() {
            let slot = st.slots[i].clone();
            let s = &slot.settings;
            let e = &st.entries[i];
            let expired = s.keep_alive.is_some_and(|k| e.last_used.elapsed() >= k.0);
            if expired
                && !s.pinned
                && e.active == 0
                && e.waiting == 0
                && matches!(e.life, Life::Ready(_))
            {
                tracing::info!(model = %s.name, "idle for keep_alive: unloading");
                self.unload_locked(&mut st, i);
                changed = true;
            }
        }
        drop(st);
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// Loads a model now (admin), waiting up to its load timeout.
    pub async fn load_now(self: &Arc<Self>, index: usize) -> Result<(), SchedulerError> {
        // An operator asking for a load skips the retry backoff.
        self.lock().entries[index].retry_at = None;
        let timeout = self.slot(index).settings.load_timeout() + Duration::from_secs(5);
        self.acquire(index, Instant::now() + timeout)
            .await
            .map(drop)
    }

    /// Unloads a model now (admin): at once when idle, else it drains first.
    pub fn unload_now(&self, index: usize) -> &'static str {
        let mut st = self.lock();
        let e = &mut st.entries[index];
        let result = match &e.life {
            Life::Ready(_) | Life::Draining(_) if e.active == 0 => {
                self.unload_locked(&mut st, index);
                "unloaded"
            }
            Life::Ready(m) => {
                e.life = Life::Draining(m.clone());
                "draining"
            }
            Life::Draining(_) => "draining",
            Life::Loading { .. } => "loading",
            Life::Unloaded | Life::Failed { .. } => "unloaded",
        };
        drop(st);
        self.changed.notify_waiters();
        result
    }

    /// Each GPU's memory as its driver reports it now (blocking: asks the driver).
    pub fn device_usage(&self) -> Vec<crate::engine::DeviceUsage> {
        self.engine.device_usage()
    }

    /// Copies states and memory into the gauges (blocking: asks the GPUs' drivers).
    pub fn refresh_gauges(&self) {
        for d in self.device_usage() {
            let device = [d.device.as_str()];
            self.metrics
                .device_memory_total_bytes
                .with_label_values(&device)
                .set(d.total.min(i64::MAX as u64) as i64);
            self.metrics
                .device_memory_free_bytes
                .with_label_values(&device)
                .set(d.free.min(i64::MAX as u64) as i64);
        }
        // In index order: a replaced model's newer slot has the last word on its name.
        let slots = self.lock().slots.clone();
        for slot in &slots {
            let status = self.status(slot.index);
            let name = slot.settings.name.as_str();
            self.metrics
                .model_loaded
                .with_label_values(&[name])
                .set(i64::from(matches!(status.status, "ready" | "draining")));
            self.metrics
                .model_memory_bytes
                .with_label_values(&[name])
                .set(status.reserved_bytes as i64);
        }
        for d in self.memory() {
            self.metrics
                .memory_used_bytes
                .with_label_values(&[d.device.as_str()])
                .set(d.used.min(i64::MAX as u64) as i64);
        }
    }
}
