//! Pulling a model by reference from the Hugging Face hub (or a mirror) into the models
//! folder: `hf://owner/repo[:QUANT]`, `hf.co/owner/repo[:QUANT]`, `owner/repo[:QUANT]` or
//! `hf://owner/repo/file.gguf`, each optionally `@revision`.
//!
//! - The quantization is resolved against the repo's file list (`GET
//!   {endpoint}/api/models/{repo}/tree/{revision}?recursive=true`, following `Link` pages):
//!   case-insensitive, matched as a whole name part (`Q4_K_M` in `x-Q4_K_M.gguf`); a repo
//!   with one GGUF model needs none; an ambiguous or missing one is an error listing what
//!   the repo has. Multi-part GGUFs (`-00001-of-0000N`) are fetched whole.
//! - Downloads (`GET {endpoint}/{repo}/resolve/{revision}/{file}`) go to a hidden
//!   `.NAME.partial` file beside the target, resume with `Range` after an interruption
//!   (in the same pull, and in a later one), are checked against the sha256 the hub
//!   publishes for the file (its LFS oid) and land by rename, so the models folder never
//!   sees a partial file.
//! - `HF_ENDPOINT` selects a mirror; `HF_TOKEN` (or the hub's token file, `HF_HOME/token`)
//!   authorises gated and private repos.
//!
//! Used by `llamagate pull` and `POST /admin/models/pull`; knows no HTTP server types.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Attempts per file (the first and resumed ones) before a pull gives up.
pub const ATTEMPTS: u32 = 5;

/// Most pages of a repo's file list read.
const MAX_PAGES: usize = 50;

/// A parsed model reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `owner/repo`.
    pub repo: String,
    /// The quantization asked for (`Q4_K_M`), if any.
    pub quant: Option<String>,
    /// A file named directly, if any.
    pub file: Option<String>,
    /// Branch, tag or commit (default `main`).
    pub revision: String,
}

impl Reference {
    /// Parses a reference (see the module documentation).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{raw}` is not a model reference; write hf://owner/repo, hf://owner/repo:Q4_K_M or hf://owner/repo/file.gguf")
        };
        let rest = raw
            .trim()
            .strip_prefix("hf://")
            .or_else(|| raw.trim().strip_prefix("https://huggingface.co/"))
            .or_else(|| raw.trim().strip_prefix("huggingface.co/"))
            .or_else(|| raw.trim().strip_prefix("hf.co/"))
            .unwrap_or(raw.trim());
        let (rest, revision) = match rest.rsplit_once('@') {
            Some((r, rev)) if !rev.is_empty() && !rev.contains('/') => (r, rev.to_string()),
            Some(_) => return Err(bad()),
            None => (rest, "main".to_string()),
        };
        let (rest, quant) = match rest.rsplit_once(':') {
            Some((r, q)) if !q.is_empty() && !q.contains('/') => (r, Some(q.to_string())),
            Some(_) => return Err(bad()),
            None => (rest, None),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let valid = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if parts.len() < 2 || !parts.iter().all(|p| valid(p)) {
            return Err(bad());
        }
        let repo = format!("{}/{}", parts[0], parts[1]);
        let file = (parts.len() > 2).then(|| parts[2..].join("/"));
        if file.is_some() && quant.is_some() {
            return Err(format!("`{raw}`: name a file or a quantization, not both"));
        }
        if file
            .as_deref()
            .is_some_and(|f| !f.to_ascii_lowercase().ends_with(".gguf"))
        {
            return Err(format!("`{raw}`: only .gguf files can be pulled"));
        }
        Ok(Self {
            repo,
            quant,
            file,
            revision,
        })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hf://{}", self.repo)?;
        if let Some(file) = &self.file {
            write!(f, "/{file}")?;
        }
        if let Some(q) = &self.quant {
            write!(f, ":{q}")?;
        }
        if self.revision != "main" {
            write!(f, "@{}", self.revision)?;
        }
        Ok(())
    }
}

/// One file of a repo, as its file list describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct HubFile {
    /// Path inside the repo.
    pub path: String,
    /// Bytes.
    #[serde(default)]
    pub size: u64,
    /// LFS details (large files): the sha256 to check.
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
    /// `file` or `directory`.
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// A file's LFS pointer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct LfsInfo {
    /// Its sha256, hex.
    pub oid: String,
    /// Bytes.
    #[serde(default)]
    pub size: u64,
}

impl HubFile {
    fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    fn sha256(&self) -> Option<&str> {
        self.lfs
            .as_ref()
            .map(|l| l.oid.as_str())
            .filter(|o| o.len() == 64)
    }
}

/// Whether `quant` is a whole part of the model name `model` (split at `.`, `-`, `_`
/// boundaries the quantization itself does not contain).
fn names_quant(model: &str, quant: &str) -> bool {
    let stem = model.to_ascii_lowercase();
    let quant = quant.to_ascii_lowercase();
    stem.match_indices(&quant).any(|(i, _)| {
        let before = stem[..i].chars().last();
        let after = stem[i + quant.len()..].chars().next();
        before.is_none_or(|c| matches!(c, '.' | '-' | '_'))
            && after.is_none_or(|c| matches!(c, '.' | '-'))
    })
}

/// The model a file belongs to: its name without a part suffix.
fn model_of(file: &HubFile) -> String {
    crate::scheduler::folder::model_name(Path::new(file.name()))
}

/// The files to fetch for `reference` among `files`: one model, every part of it.
pub fn choose(reference: &Reference, files: &[HubFile]) -> Result<Vec<HubFile>, String> {
    let ggufs: Vec<&HubFile> = files
        .iter()
        .filter(|f| f.kind != "directory")
        .filter(|f| {
            let n = f.name().to_ascii_lowercase();
            n.ends_with(".gguf") && !n.starts_with("mmproj")
        })
        .collect();
    if let Some(file) = &reference.file {
        let found = ggufs
            .iter()
            .find(|f| f.path == *file)
            .ok_or_else(|| format!("{} has no file `{file}`", reference.repo))?;
        let model = model_of(found);
        return Ok(parts_of(&ggufs, &model));
    }
    let mut models: Vec<String> = ggufs.iter().map(|f| model_of(f)).collect();
    models.sort();
    models.dedup();
    let listing = |models: &[String]| models.join(", ");
    let chosen: Vec<String> = match &reference.quant {
        Some(q) => models
            .iter()
            .filter(|m| names_quant(m, q))
            .cloned()
            .collect(),
        None => models.clone(),
    };
    match (chosen.len(), &reference.quant) {
        (1, _) => Ok(parts_of(&ggufs, &chosen[0])),
        (0, _) if models.is_empty() => Err(format!("{} has no GGUF files", reference.repo)),
        (0, Some(q)) => Err(format!(
            "{} has no {q} GGUF; it has: {}",
            reference.repo,
            listing(&models)
        )),
        (_, Some(q)) => Err(format!(
            "{q} is ambiguous in {}: {}; name the file (hf://{}/FILE.gguf)",
            reference.repo,
            listing(&chosen),
            reference.repo
        )),
        (_, None) => Err(format!(
            "{} has several GGUF models; add a quantization (hf://{}:QUANT) or a file: {}",
            reference.repo,
            reference.repo,
            listing(&models)
        )),
    }
}

fn parts_of(ggufs: &[&HubFile], model: &str) -> Vec<HubFile> {
    let mut parts: Vec<HubFile> = ggufs
        .iter()
        .filter(|f| model_of(f) == model)
        .map(|f| (*f).clone())
        .collect();
    parts.sort_by(|a, b| a.path.cmp(&b.path));
    parts
}

/// The hub's address: `HF_ENDPOINT` or huggingface.co.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

/// The hub token: `HF_TOKEN`, else the token file of `HF_HOME` (default
/// `~/.cache/huggingface/token`).
pub fn token() -> Option<String> {
    if let Some(t) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        return Some(t);
    }
    let home = std::env::var_os("HF_HOME").map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface"))
    })?;
    std::fs::read_to_string(home.join("token"))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Progress of one pull, shared with whoever shows it.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes on disk so far (all parts).
    pub done: AtomicU64,
    /// Bytes in all (0 until the file list was read).
    pub total: AtomicU64,
}

/// What a pull produced.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The model's name in the models folder (its file stem).
    pub model: String,
    /// Bytes fetched over the network in this pull (less than the size after a resume).
    pub fetched: u64,
}

/// A pull that failed, for people: what failed, without local paths.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PullError {
    /// What failed.
    pub message: String,
    /// The hub (or the way to it) failed: unreachable, a 5xx, an unreadable answer, a
    /// download that kept breaking. Otherwise the request is at fault (a repo or file that
    /// does not exist, a refused token, a quantization the repo lacks) or this machine is.
    pub hub_failed: bool,
}

impl PullError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hub_failed: false,
        }
    }

    fn hub(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hub_failed: true,
        }
    }
}

struct Client {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
}

impl Client {
    fn new() -> Result<Self, PullError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("llamagate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PullError::new(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self {
            http,
            endpoint: endpoint(),
            token: token(),
        })
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.get(url);
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{path}`, each segment percent-encoded (file
    /// names may hold spaces, `#`, `?`...).
    fn file_url(&self, reference: &Reference, path: &str) -> Result<reqwest::Url, PullError> {
        let bad = || {
            PullError::new(format!(
                "HF_ENDPOINT `{}` is not an http(s) URL",
                self.endpoint
            ))
        };
        let mut url = reqwest::Url::parse(&self.endpoint).map_err(|_| bad())?;
        url.path_segments_mut()
            .map_err(|_| bad())?
            .pop_if_empty()
            .extend(reference.repo.split('/'))
            .push("resolve")
            .push(&reference.revision)
            .extend(path.split('/'));
        Ok(url)
    }

    fn refused(&self, status: reqwest::StatusCode, what: &str) -> PullError {
        match status.as_u16() {
            401 | 403 => PullError::new(format!(
                "the hub refused {what}: a gated or private repository needs HF_TOKEN (or `huggingface-cli login`), and access granted on its page"
            )),
            404 => PullError::new(format!("{what} does not exist on the hub")),
            s if s >= 500 => PullError::hub(format!("the hub answered {s} for {what}")),
            s => PullError::new(format!("the hub answered {s} for {what}")),
        }
    }

    async fn list(&self, reference: &Reference) -> Result<Vec<HubFile>, PullError> {
        let mut url = format!(
            "{}/api/models/{}/tree/{}?recursive=true",
            self.endpoint, reference.repo, reference.revision
        );
        let mut files = Vec::new();
        for _ in 0..MAX_PAGES {
            let res = self.get(&url).send().await.map_err(|e| {
                PullError::hub(format!(
                    "the hub could not be reached at {}: {}",
                    self.endpoint,
                    e.without_url()
                ))
            })?;
            if !res.status().is_success() {
                return Err(self.refused(res.status(), &format!("`{}`", reference.repo)));
            }
            let next = res
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|l| l.to_str().ok())
                .and_then(next_link);
            let page: Vec<HubFile> = res
                .json()
                .await
                .map_err(|e| PullError::hub(format!("the hub's file list is not readable: {e}")))?;
            files.extend(page);
            match next {
                Some(n) => url = n,
                None => return Ok(files),
            }
        }
        Ok(files)
    }

    /// Fetches `file` into `dir`, resuming a partial copy; returns the bytes fetched now.
    async fn fetch(
        &self,
        reference: &Reference,
        file: &HubFile,
        dir: &Path,
        progress: &Progress,
        base: u64,
    ) -> Result<u64, PullError> {
        let target = dir.join(file.name());
        let partial = dir.join(format!(".{}.partial", file.name()));
        let url = self.file_url(reference, &file.path)?;
        let mut fetched = 0u64;
        let mut last_error = None;
        for attempt in 1..=ATTEMPTS {
            match self
                .fetch_once(url.as_str(), file, &partial, progress, base, &mut fetched)
                .await
            {
                Ok(()) => {
                    last_error = None;
                    break;
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(e)) => {
                    tracing::warn!(file = %file.path, attempt, error = %e, "download interrupted; resuming");
                    last_error = Some(e);
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                }
            }
        }
        if let Some(e) = last_error {
            return Err(PullError::hub(format!(
                "downloading {} failed {ATTEMPTS} times (the partial file is kept; pulling again resumes): {e}",
                file.path
            )));
        }
        // Check what is on disk against the hub's sha256, off the async threads.
        let expected = file.sha256().map(str::to_ascii_lowercase);
        let check = partial.clone();
        let actual = tokio::task::spawn_blocking(move || sha256_of(&check))
            .await
            .map_err(|_| PullError::new("checking the download failed"))?
            .map_err(|e| PullError::new(format!("reading the download failed: {}", e.kind())))?;
        if let Some(expected) = expected {
            if actual != expected {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(PullError::new(format!(
                    "{} is corrupt (sha256 {actual}, the hub says {expected}); it was deleted, pull again",
                    file.path
                )));
            }
        }
        tokio::fs::rename(&partial, &target)
            .await
            .map_err(|e| PullError::new(format!("placing {} failed: {}", file.name(), e.kind())))?;
        Ok(fetched)
    }

    async fn fetch_once(
        &self,
        url: &str,
        file: &HubFile,
        partial: &Path,
        progress: &Progress,
        base: u64,
        fetched: &mut u64,
    ) -> Result<(), Attempt> {
        let mut have = tokio::fs::metadata(partial).await.map_or(0, |m| m.len());
        let size = file_size(file);
        // What is already on disk counts as done.
        progress.done.store(base + have, Ordering::Relaxed);
        if size > 0 && have == size {
            return Ok(());
        }
        let mut request = self.get(url);
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let res = request
            .send()
            .await
            .map_err(|e| Attempt::Retry(PullError::new(e.without_url().to_string())))?;
        let status = res.status();
        let append = match status.as_u16() {
            206 => true,
            200 => false,
            416 if have > 0 => {
                // Past the end: the partial file is wrong; start again.
                let _ = tokio::fs::remove_file(partial).await;
                return Err(Attempt::Retry(PullError::new(
                    "the partial file was longer than the file",
                )));
            }
            s if s >= 500 || s == 429 => {
                return Err(Attempt::Retry(PullError::new(format!(
                    "the hub answered {s}"
                ))))
            }
            _ => {
                return Err(Attempt::Fatal(
                    self.refused(status, &format!("`{}`", file.path)),
                ))
            }
        };
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(partial)
            .await
            .map_err(|e| {
                Attempt::Fatal(PullError::new(format!(
                    "cannot write into the models folder: {}",
                    e.kind()
                )))
            })?;
        if !append {
            have = 0;
            progress.done.store(base, Ordering::Relaxed);
        }
        let mut body = res.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| Attempt::Retry(PullError::new(e.without_url().to_string())))?;
            out.write_all(&chunk).await.map_err(|e| {
                Attempt::Fatal(PullError::new(format!(
                    "writing the model failed: {}",
                    e.kind()
                )))
            })?;
            let n = chunk.len() as u64;
            *fetched += n;
            have += n;
            progress.done.store(base + have, Ordering::Relaxed);
        }
        out.flush().await.map_err(|e| {
            Attempt::Fatal(PullError::new(format!(
                "writing the model failed: {}",
                e.kind()
            )))
        })?;
        drop(out);
        let now = tokio::fs::metadata(partial).await.map_or(0, |m| m.len());
        if size > 0 && now < size {
            return Err(Attempt::Retry(PullError::new(format!(
                "the connection ended at {now} of {size} bytes"
            ))));
        }
        Ok(())
    }
}

enum Attempt {
    Retry(PullError),
    Fatal(PullError),
}

/// A file's size in bytes (its LFS size for a large file).
fn file_size(file: &HubFile) -> u64 {
    file.lfs
        .as_ref()
        .map_or(file.size, |l| l.size.max(file.size))
}

/// The `next` URL of a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Resolves `reference` to files (before anything is downloaded).
pub async fn resolve(reference: &Reference) -> Result<Vec<HubFile>, PullError> {
    let client = Client::new()?;
    let files = client.list(reference).await?;
    choose(reference, &files).map_err(PullError::new)
}

/// Pulls `files` of `reference` into `dir`, counting into `progress`.
pub async fn pull(
    reference: &Reference,
    files: &[HubFile],
    dir: &Path,
    progress: Arc<Progress>,
) -> Result<Pulled, PullError> {
    let client = Client::new()?;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| PullError::new(format!("cannot make the models folder: {}", e.kind())))?;
    progress
        .total
        .store(files.iter().map(file_size).sum(), Ordering::Relaxed);
    let mut fetched = 0;
    let mut base = 0;
    for file in files {
        fetched += client.fetch(reference, file, dir, &progress, base).await?;
        base += file_size(file);
    }
    let model = files
        .first()
        .map(model_of)
        .ok_or_else(|| PullError::new("nothing to pull"))?;
    Ok(Pulled { model, fetched })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> HubFile {
        HubFile {
            path: path.into(),
            size: 10,
            lfs: None,
            kind: "file".into(),
        }
    }

    #[test]
    fn references_parse() {
        let r = Reference::parse("hf://bartowski/Qwen2.5-7B-Instruct-GGUF:q4_k_m").unwrap();
        assert_eq!(r.repo, "bartowski/Qwen2.5-7B-Instruct-GGUF");
        assert_eq!(r.quant.as_deref(), Some("q4_k_m"));
        assert_eq!(r.revision, "main");
        assert_eq!(
            r.to_string(),
            "hf://bartowski/Qwen2.5-7B-Instruct-GGUF:q4_k_m"
        );
        let r = Reference::parse("hf.co/owner/repo@v2").unwrap();
        assert_eq!(
            (r.repo.as_str(), r.quant, r.revision.as_str()),
            ("owner/repo", None, "v2")
        );
        let r = Reference::parse("owner/repo/sub/m.gguf").unwrap();
        assert_eq!(r.file.as_deref(), Some("sub/m.gguf"));
        for bad in [
            "hf://owner",
            "hf://../x",
            "hf://o/r/readme.md",
            "hf://o/r/m.gguf:Q4_0",
            "o/r:",
            "o/r@a/b",
            "o r/x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_quantization_picks_one_model_with_all_its_parts() {
        let files = vec![
            file("README.md"),
            file("Qwen-7B-Q4_K_M.gguf"),
            file("Qwen-7B-Q4_K_S.gguf"),
            file("Qwen-7B-Q8_0.gguf"),
            file("mmproj-Qwen-7B-f16.gguf"),
            file("big/Qwen-7B-F16-00002-of-00002.gguf"),
            file("big/Qwen-7B-F16-00001-of-00002.gguf"),
        ];
        let pick = |q: Option<&str>| {
            choose(
                &Reference {
                    repo: "o/r".into(),
                    quant: q.map(str::to_string),
                    file: None,
                    revision: "main".into(),
                },
                &files,
            )
        };
        assert_eq!(pick(Some("q4_k_m")).unwrap()[0].path, "Qwen-7B-Q4_K_M.gguf");
        let split = pick(Some("F16")).unwrap();
        assert_eq!(
            split.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            [
                "big/Qwen-7B-F16-00001-of-00002.gguf",
                "big/Qwen-7B-F16-00002-of-00002.gguf"
            ]
        );
        let missing = pick(Some("Q5_K_M")).unwrap_err();
        assert!(
            missing.contains("Qwen-7B-Q8_0") && missing.contains("no Q5_K_M"),
            "{missing}"
        );
        // `Q4_K` is a part of neither name on its own: not a prefix match.
        assert!(pick(Some("Q4_K")).unwrap_err().contains("no Q4_K"));
        assert!(pick(None).unwrap_err().contains("several GGUF models"));
        let one = vec![file("a.md"), file("m-Q4_0.gguf")];
        let r = Reference::parse("o/r").unwrap();
        assert_eq!(choose(&r, &one).unwrap()[0].path, "m-Q4_0.gguf");
        assert!(choose(&r, &[file("a.md")]).unwrap_err().contains("no GGUF"));
    }

    #[test]
    fn file_paths_are_encoded_per_segment() {
        let client = Client {
            http: reqwest::Client::new(),
            endpoint: "http://mirror.lan/hf/".into(),
            token: None,
        };
        let r = Reference::parse("o/r@v1").unwrap();
        let url = |path: &str| client.file_url(&r, path).unwrap().to_string();
        assert_eq!(
            url("sub dir/a#b?.gguf"),
            "http://mirror.lan/hf/o/r/resolve/v1/sub%20dir/a%23b%3F.gguf"
        );
        assert_eq!(
            url("Q4_K_M/m-Q4_K_M.gguf"),
            "http://mirror.lan/hf/o/r/resolve/v1/Q4_K_M/m-Q4_K_M.gguf"
        );
    }

    #[test]
    fn link_headers_give_the_next_page() {
        assert_eq!(
            next_link("<https://hub/api/models/o/r/tree/main?cursor=abc>; rel=\"next\"").as_deref(),
            Some("https://hub/api/models/o/r/tree/main?cursor=abc")
        );
        assert_eq!(next_link("<x>; rel=\"prev\""), None);
    }
}

/// Pulls in progress, by the model name they will produce: what `/v1/models` shows as
/// `downloading`, and what keeps two pulls of one model from writing the same file.
#[derive(Default)]
pub struct Pulls {
    active: std::sync::Mutex<std::collections::HashMap<String, ActivePull>>,
}

/// One pull in progress.
#[derive(Clone)]
pub struct ActivePull {
    /// What was asked for.
    pub reference: String,
    /// Its progress.
    pub progress: Arc<Progress>,
    /// Its outcome, once it ended (for those following it).
    pub done: tokio::sync::watch::Receiver<Option<Result<Pulled, PullError>>>,
}

impl Pulls {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, ActivePull>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every pull in progress: `(model, pull)`.
    pub fn list(&self) -> Vec<(String, ActivePull)> {
        let mut all: Vec<(String, ActivePull)> = self
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Starts pulling `files` of `reference` into `dir` in a task of its own (it goes on
    /// if whoever asked leaves), or joins the pull of the same model already running.
    /// `on_end` runs once with the outcome (metrics, logs).
    pub fn start(
        self: &Arc<Self>,
        reference: &Reference,
        files: Vec<HubFile>,
        dir: PathBuf,
        on_end: impl FnOnce(&Result<Pulled, PullError>) + Send + 'static,
    ) -> (String, ActivePull) {
        let model = files.first().map(model_of).unwrap_or_default();
        let mut active = self.lock();
        if let Some(running) = active.get(&model) {
            return (model, running.clone());
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        let pull_state = ActivePull {
            reference: reference.to_string(),
            progress: Arc::new(Progress::default()),
            done: rx,
        };
        active.insert(model.clone(), pull_state.clone());
        drop(active);
        let pulls = self.clone();
        let reference = reference.clone();
        let progress = pull_state.progress.clone();
        let name = model.clone();
        tokio::spawn(async move {
            let outcome = pull(&reference, &files, &dir, progress).await;
            on_end(&outcome);
            pulls.lock().remove(&name);
            let _ = tx.send(Some(outcome));
        });
        (model, pull_state)
    }
}
