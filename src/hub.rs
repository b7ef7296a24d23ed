//! Model files from the Hugging Face hub (`hf://owner/repo/file.gguf[@revision]`): where a
//! file lies in the standard hub cache (`HF_HOME`, default `~/.cache/huggingface`), and
//! downloading it there (`HF_ENDPOINT` for mirrors, `HF_TOKEN` or the hub's token file
//! for gated repositories). Used by the scheduler before a model is loaded, so every
//! engine loads a local file; engines never reach the hub themselves.

use std::path::PathBuf;

use hf_hub::{Cache, Repo, RepoType};

use crate::config::{ModelSettings, ModelSource};

fn repo(repo: &str, revision: &Option<String>) -> Repo {
    Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.clone().unwrap_or_else(|| "main".into()),
    )
}

/// The cached copy of a hub model's file, when it has been downloaded (blocking: a few
/// small file reads).
pub fn cached_file(source: &ModelSource) -> Option<PathBuf> {
    let ModelSource::HuggingFace {
        repo: id,
        file,
        revision,
    } = source
    else {
        return None;
    };
    Cache::from_env().repo(repo(id, revision)).get(file)
}

/// `settings` with a hub source replaced by its cached file, when there is one
/// (blocking). Other sources are returned as they are.
pub fn with_cached_file(settings: &ModelSettings) -> ModelSettings {
    let mut local = settings.clone();
    if let Some(path) = cached_file(&settings.source) {
        local.source = ModelSource::File(path);
    }
    local
}

/// `settings` with a hub source replaced by a local file, downloading the file into the
/// hub cache first when it is not there yet. Other sources are returned as they are.
pub async fn fetch(settings: &ModelSettings) -> Result<ModelSettings, String> {
    let ModelSource::HuggingFace {
        repo: id,
        file,
        revision,
    } = &settings.source
    else {
        return Ok(settings.clone());
    };
    let source = settings.source.clone();
    let cached = tokio::task::spawn_blocking(move || cached_file(&source))
        .await
        .ok()
        .flatten();
    let path = match cached {
        Some(path) => path,
        None => {
            tracing::info!(model = %settings.name, source = %settings.source, "downloading from the hub");
            let token = std::env::var("HF_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .or_else(|| Cache::from_env().token());
            let api = hf_hub::api::tokio::ApiBuilder::from_env()
                .with_token(token)
                .with_progress(false)
                .build()
                .map_err(|e| format!("cannot reach the hub: {e}"))?;
            api.repo(repo(id, revision))
                .get(file)
                .await
                .map_err(|e| describe(&settings.source, &e))?
        }
    };
    let mut local = settings.clone();
    local.source = ModelSource::File(path);
    Ok(local)
}

/// A download failure, for clients: what failed, without local paths.
fn describe(source: &ModelSource, e: &hf_hub::api::tokio::ApiError) -> String {
    use hf_hub::api::tokio::ApiError;
    match e {
        ApiError::RequestError(r)
            if r.status()
                .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403) =>
        {
            format!("the Hugging Face hub refused `{source}`: a gated or private repository needs HF_TOKEN")
        }
        ApiError::RequestError(r) if r.status().is_some_and(|s| s.as_u16() == 404) => {
            format!("`{source}` does not exist on the Hugging Face hub")
        }
        ApiError::RequestError(_) | ApiError::TooManyRetries(_) => {
            format!("the Hugging Face hub could not be reached to fetch `{source}`")
        }
        ApiError::IoError(io) => format!("downloading `{source}` failed: {}", io.kind()),
        other => format!("downloading `{source}` failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_in_the_cache_is_found_by_its_reference() {
        let home = std::env::temp_dir().join(format!("llamagate-hub-{}", std::process::id()));
        let snapshot = home.join("hub/models--owner--repo/snapshots/abc123");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(home.join("hub/models--owner--repo/refs")).unwrap();
        std::fs::write(home.join("hub/models--owner--repo/refs/main"), "abc123").unwrap();
        std::fs::write(snapshot.join("m.gguf"), b"GGUF").unwrap();
        let cache = Cache::new(home.join("hub"));
        let found = cache.repo(repo("owner/repo", &None)).get("m.gguf").unwrap();
        assert_eq!(found, snapshot.join("m.gguf"));
        assert!(cache
            .repo(repo("owner/repo", &Some("dev".into())))
            .get("m.gguf")
            .is_none());
        let _ = std::fs::remove_dir_all(home);
    }
}
