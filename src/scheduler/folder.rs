//! The models folder (`scheduler.models_dir`): every GGUF file in it is served under its
//! file stem (`Qwen2.5-7B-Instruct-Q4_K_M`), plus a short alias without the quantization
//! (`qwen2.5-7b-instruct`) where no other file or model has it, with the settings of
//! `[model_defaults]`. A file that is also a `[[models]]` entry's source is that entry's.
//!
//! Changes are noticed while serving: a file watcher (inotify, FSEvents, ...) triggers a
//! rescan, and a periodic rescan (`models_dir_rescan_secs`) is the fallback where watching
//! fails. A new file is added once it is complete (unchanged for [`SETTLE`]); a replaced
//! file's model is replaced (the old one drains, the next request loads the new file); a
//! removed file's model is removed (running requests finish, then it unloads).
//! Multi-part GGUFs are served by their first part; vision projectors (`mmproj-*`) and
//! hidden or partial files are skipped.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::registry::Origin;
use super::Scheduler;
use crate::config::{ModelSource, Settings};

/// How long a file must stay unchanged before it is served (a copy may be in progress).
pub const SETTLE: Duration = Duration::from_secs(2);

/// A file's version: length and modification time.
type Stamp = (u64, SystemTime);

/// What the folder serves, between scans.
struct Folder {
    dir: PathBuf,
    settings: Arc<Settings>,
    /// Files served: their stamp and model name.
    served: HashMap<PathBuf, (Stamp, String)>,
    /// Every candidate's stamp at the last scan.
    last_seen: HashMap<PathBuf, Stamp>,
    /// Files refused (name taken, not a model), by stamp: logged once per version.
    refused: HashMap<PathBuf, Stamp>,
    first: bool,
}

/// A file the folder would serve: a `.gguf`, not hidden, not a projector, not a later
/// part of a multi-part model.
pub fn is_candidate(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let lower = name.to_ascii_lowercase();
    if !lower.ends_with(".gguf") || lower.starts_with('.') || lower.starts_with("mmproj") {
        return false;
    }
    match shard_part(&lower) {
        Some((part, _)) => part == 1,
        None => true,
    }
}

/// `(part, parts)` of a multi-part GGUF name (`…-00002-of-00003.gguf`).
pub fn shard_part(name: &str) -> Option<(u32, u32)> {
    split_part(name.strip_suffix(".gguf")?).map(|(_, part, parts)| (part, parts))
}

/// A multi-part stem (`x-00002-of-00003`) as its base (`x`), part and number of parts.
fn split_part(stem: &str) -> Option<(&str, u32, u32)> {
    let (rest, parts) = stem.rsplit_once("-of-")?;
    let (base, part) = rest.rsplit_once('-')?;
    if part.len() != 5 || parts.len() != 5 {
        return None;
    }
    Some((base, part.parse().ok()?, parts.parse().ok()?))
}

/// The model name of a file: its stem (without a part suffix), with characters model
/// ids do not allow replaced by `-`.
pub fn model_name(path: &Path) -> String {
    let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    let stem = &file[..file.len() - ".gguf".len().min(file.len())];
    let stem = split_part(stem).map_or(stem, |(base, _, _)| base);
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':') {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    if name.is_empty() {
        "model".into()
    } else {
        name
    }
}

/// Whether `token` names a quantization (`Q4_K_M`, `IQ4_XS`, `Q8_0`, `F16`, `BF16`, ...).
fn is_quant(token: &str) -> bool {
    let t = token.to_ascii_uppercase();
    let digits_after = |prefix: &str| {
        t.strip_prefix(prefix)
            .and_then(|r| r.chars().next())
            .is_some_and(|c| c.is_ascii_digit())
    };
    (digits_after("Q") || digits_after("IQ"))
        && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || matches!(t.as_str(), "F16" | "BF16" | "F32" | "FP16" | "MXFP4")
}

/// The short alias of a model name: lower case, without the quantization suffix.
pub fn short_alias(name: &str) -> Option<String> {
    let cut = name
        .char_indices()
        .filter(|(_, c)| matches!(c, '.' | '-' | '_'))
        .find(|(i, _)| is_quant(&name[i + 1..]))
        .map(|(i, _)| i)?;
    let short = name[..cut].to_ascii_lowercase();
    (!short.is_empty()).then_some(short)
}

fn stamp(meta: &std::fs::Metadata) -> Option<Stamp> {
    Some((meta.len(), meta.modified().ok()?))
}

impl Folder {
    fn new(dir: PathBuf, settings: Arc<Settings>) -> Self {
        Self {
            dir,
            settings,
            served: HashMap::new(),
            last_seen: HashMap::new(),
            refused: HashMap::new(),
            first: true,
        }
    }

    /// The candidates in the folder now, with their stamps.
    fn list(&self) -> Vec<(PathBuf, Stamp)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<(PathBuf, Stamp)> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_candidate(p))
            .filter_map(|p| {
                let meta = std::fs::metadata(&p).ok()?;
                meta.is_file().then_some(())?;
                Some((p.clone(), stamp(&meta)?))
            })
            .collect();
        files.sort();
        files
    }

    /// One pass: serves new and changed files, removes the models of files gone.
    /// Blocking (directory listing, GGUF headers). Returns whether a file is still
    /// settling (so the next pass should come soon).
    fn scan(&mut self, scheduler: &Scheduler) -> bool {
        let files = self.list();
        let now = SystemTime::now();
        let mut settling = false;
        let live = scheduler.registry().slots();
        let configured: HashSet<PathBuf> = live
            .iter()
            .filter(|s| s.origin != Origin::Folder)
            .filter_map(|s| match &s.settings.source {
                ModelSource::File(p) => Some(std::fs::canonicalize(p).unwrap_or(p.clone())),
                _ => None,
            })
            .collect();
        // Short aliases: only those exactly one file here would get.
        let mut shorts: HashMap<String, usize> = HashMap::new();
        for (path, _) in &files {
            if let Some(short) = short_alias(&model_name(path)) {
                *shorts.entry(short).or_default() += 1;
            }
        }
        let mut present = HashSet::new();
        let mut seen = HashMap::new();
        for (path, stamp) in files {
            present.insert(path.clone());
            seen.insert(path.clone(), stamp);
            let old_enough = now.duration_since(stamp.1).is_ok_and(|age| age >= SETTLE);
            let unchanged = self.first || self.last_seen.get(&path) == Some(&stamp);
            if !(old_enough && unchanged) {
                settling = true;
                continue;
            }
            let canonical = std::fs::canonicalize(&path).unwrap_or(path.clone());
            if configured.contains(&canonical) {
                continue;
            }
            if self.served.get(&path).is_some_and(|(s, _)| *s == stamp)
                || self.refused.get(&path) == Some(&stamp)
            {
                continue;
            }
            let replacing = self.served.contains_key(&path);
            let name = match self.served.get(&path) {
                Some((_, name)) => name.clone(),
                None => model_name(&path),
            };
            let aliases: Vec<String> = short_alias(&name)
                .filter(|s| shorts.get(s) == Some(&1) && *s != name)
                .filter(|s| {
                    scheduler
                        .registry()
                        .resolve(s)
                        .map_or(true, |slot| slot.settings.name == name)
                })
                .into_iter()
                .collect();
            let result = self
                .settings
                .folder_model(&name, aliases, &path)
                .and_then(|model| {
                    // A folder model replaces only a folder model of its name.
                    let taken = scheduler
                        .registry()
                        .resolve(&name)
                        .ok()
                        .filter(|s| s.origin != Origin::Folder);
                    match taken {
                        Some(slot) => Err(format!(
                            "the name is taken by a model from {}",
                            slot.origin.as_str()
                        )),
                        None => scheduler.add_model(&model, Origin::Folder, true),
                    }
                });
            match result {
                Ok(_) => {
                    self.served.insert(path.clone(), (stamp, name));
                    self.refused.remove(&path);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, replacing, "models_dir: file not served");
                    self.refused.insert(path.clone(), stamp);
                }
            }
        }
        let gone: Vec<PathBuf> = self
            .served
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for path in gone {
            if let Some((_, name)) = self.served.remove(&path) {
                let ours = scheduler
                    .registry()
                    .resolve(&name)
                    .is_ok_and(|s| s.origin == Origin::Folder && s.settings.name == name);
                if ours {
                    tracing::info!(file = %path.display(), model = %name, "models_dir: file removed");
                    scheduler.remove_model(&name);
                }
            }
        }
        self.refused.retain(|p, _| present.contains(p));
        self.last_seen = seen;
        self.first = false;
        settling
    }
}

/// Serves `settings.scheduler.models_dir` (when set) and watches it while the runtime
/// lives. The first scan runs before this returns (blocking: call it at start-up, off
/// the async threads or before the runtime serves).
pub fn watch(scheduler: Arc<Scheduler>, settings: Arc<Settings>) {
    let Some(dir) = settings.scheduler.models_dir().map(Path::to_path_buf) else {
        return;
    };
    let rescan = Duration::from_secs(settings.scheduler.models_dir_rescan_secs.max(1));
    let mut folder = Folder::new(dir.clone(), settings);
    let mut settling = folder.scan(&scheduler);
    tracing::info!(dir = %dir.display(), models = folder.served.len(), "models_dir scanned");
    tokio::spawn(async move {
        // Each event only says "look again": one waiting signal is enough.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher = None;
        loop {
            if watcher.is_none() {
                watcher = watch_dir(&dir, tx.clone());
            }
            let wait = if settling { SETTLE } else { rescan };
            tokio::select! {
                _ = rx.recv() => {
                    // Let a burst of events (a copy, a rename) end first.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(wait) => {}
            }
            let sched = scheduler.clone();
            let pass = tokio::task::spawn_blocking(move || {
                let settling = folder.scan(&sched);
                (folder, settling)
            })
            .await;
            match pass {
                Ok((f, s)) => {
                    folder = f;
                    settling = s;
                }
                Err(e) => {
                    tracing::error!(error = %e, "models_dir: the scan failed; watching stops");
                    return;
                }
            }
        }
    });
}

/// A watcher that signals `tx` on any change in `dir`; None where the platform cannot
/// watch it (or it does not exist yet): the periodic rescan covers that.
fn watch_dir(dir: &Path, tx: tokio::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.try_send(());
        }
    })
    .ok()?;
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| tracing::debug!(dir = %dir.display(), error = %e, "models_dir: not watched; rescanning periodically"))
        .ok()?;
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_aliases_and_parts() {
        let n = |s: &str| model_name(Path::new(s));
        assert_eq!(
            n("m/SmolLM2-135M-Instruct.Q4_1.gguf"),
            "SmolLM2-135M-Instruct.Q4_1"
        );
        assert_eq!(n("Qwen2.5 7B (final).gguf"), "Qwen2.5-7B--final-");
        assert_eq!(
            n("Meta-Llama-3.1-70B-Instruct-Q4_K_M-00001-of-00003.gguf"),
            "Meta-Llama-3.1-70B-Instruct-Q4_K_M"
        );
        assert_eq!(
            short_alias("SmolLM2-135M-Instruct.Q4_1").as_deref(),
            Some("smollm2-135m-instruct")
        );
        assert_eq!(
            short_alias("Qwen2.5-7B-Instruct-Q4_K_M").as_deref(),
            Some("qwen2.5-7b-instruct")
        );
        assert_eq!(
            short_alias("all-MiniLM-L6-v2.F16").as_deref(),
            Some("all-minilm-l6-v2")
        );
        assert_eq!(
            short_alias("Llama-3.2-1B-Instruct-IQ4_XS").as_deref(),
            Some("llama-3.2-1b-instruct")
        );
        assert_eq!(short_alias("mymodel"), None);
        assert!(is_candidate(Path::new("a/x.GGUF")));
        assert!(is_candidate(Path::new("x-00001-of-00002.gguf")));
        assert!(!is_candidate(Path::new("x-00002-of-00002.gguf")));
        assert!(!is_candidate(Path::new("mmproj-x-f16.gguf")));
        assert!(!is_candidate(Path::new(".x.gguf")));
        assert!(!is_candidate(Path::new("x.gguf.part")));
        assert!(!is_candidate(Path::new("notes.txt")));
    }
}
