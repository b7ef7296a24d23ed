//! Usage per key name and model, by the hour, and the keys made at run time, kept in a
//! SQLite file (`auth.store`) so that they survive a restart. Requests add to counters
//! in memory; a flush every `auth.store_flush_secs` writes them in one transaction, so a
//! crash loses at most the last interval and never half of one. Every call that touches
//! the file blocks: from async code, call it through `spawn_blocking`. Without a file
//! (`store = ""`) the same tables live in memory, for this run only.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// Counters of one key and model in one hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// Requests.
    pub requests: u64,
    /// Of those, answered with an error status.
    pub errors: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

impl Counts {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// One row of usage: a key name and a model over a span of time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    /// The key's name (`unnamed`, `admin` and `anonymous` for the others).
    pub key: String,
    /// The model (empty for requests that named none, such as `GET /v1/models`).
    pub model: String,
    /// The counters.
    #[serde(flatten)]
    pub counts: Counts,
}

/// A key made at run time (`POST /admin/keys`), as stored: its digest, never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Its name.
    pub name: String,
    /// SHA-256 of the key.
    pub digest: [u8; 32],
    /// Its settings (allow-list and limits) as JSON.
    pub settings: String,
    /// Unix seconds it was made.
    pub created: i64,
}

/// The store.
pub struct UsageStore {
    db: Mutex<Connection>,
    /// Not yet flushed: (hour since the epoch, key, model) → counts. Bounded by the keys
    /// and models that are used within one flush interval.
    pending: Mutex<HashMap<(i64, String, String), Counts>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    hour INTEGER NOT NULL,
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, key, model)
);
CREATE TABLE IF NOT EXISTS keys (
    name TEXT PRIMARY KEY,
    digest BLOB NOT NULL,
    settings TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS disabled_keys (
    name TEXT PRIMARY KEY
);
";

fn sql_error(e: rusqlite::Error) -> String {
    e.to_string()
}

impl UsageStore {
    /// Opens (creating it and its folder) the file at `path`, or an in-memory store.
    pub fn open(path: Option<&Path>) -> Result<Self, String> {
        let db = match path {
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                let db = Connection::open(path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                // WAL: a flush never blocks readers, and a crash mid-flush rolls back.
                db.pragma_update(None, "journal_mode", "WAL")
                    .map_err(sql_error)?;
                db.pragma_update(None, "synchronous", "NORMAL")
                    .map_err(sql_error)?;
                db
            }
            None => Connection::open_in_memory().map_err(sql_error)?,
        };
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql_error)?;
        db.execute_batch(SCHEMA).map_err(sql_error)?;
        Ok(Self {
            db: Mutex::new(db),
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one request's counts at `unix` seconds (no I/O: they wait for the flush).
    pub fn record(&self, unix: i64, key: &str, model: &str, counts: Counts) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .entry((unix.div_euclid(3600), key.to_string(), model.to_string()))
            .or_default()
            .add(&counts);
    }

    /// Writes what was recorded since the last flush, in one transaction (blocks). On
    /// failure the counts are kept for the next try.
    pub fn flush(&self) -> Result<(), String> {
        let taken: Vec<_> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.drain().collect()
        };
        if taken.is_empty() {
            return Ok(());
        }
        let written = (|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO usage (hour, key, model, requests, errors, prompt_tokens, completion_tokens)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (hour, key, model) DO UPDATE SET
                       requests = requests + excluded.requests,
                       errors = errors + excluded.errors,
                       prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                       completion_tokens = completion_tokens + excluded.completion_tokens",
                )?;
                for ((hour, key, model), c) in &taken {
                    upsert.execute(params![
                        hour,
                        key,
                        model,
                        c.requests as i64,
                        c.errors as i64,
                        c.prompt_tokens as i64,
                        c.completion_tokens as i64
                    ])?;
                }
            }
            tx.commit()
        })();
        if let Err(e) = written {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (k, c) in taken {
                pending.entry(k).or_default().add(&c);
            }
            return Err(e.to_string());
        }
        Ok(())
    }

    /// Usage per key and model since `since` (unix seconds, rounded down to its hour),
    /// flushed first (blocks).
    pub fn usage_since(&self, since: i64) -> Result<Vec<UsageRow>, String> {
        self.flush()?;
        let db = self.db();
        let mut query = db
            .prepare_cached(
                "SELECT key, model, SUM(requests), SUM(errors), SUM(prompt_tokens), SUM(completion_tokens)
                 FROM usage WHERE hour >= ?1 GROUP BY key, model ORDER BY key, model",
            )
            .map_err(sql_error)?;
        let rows = query
            .query_map(params![since.div_euclid(3600)], |r| {
                Ok(UsageRow {
                    key: r.get(0)?,
                    model: r.get(1)?,
                    counts: Counts {
                        requests: r.get::<_, i64>(2)? as u64,
                        errors: r.get::<_, i64>(3)? as u64,
                        prompt_tokens: r.get::<_, i64>(4)? as u64,
                        completion_tokens: r.get::<_, i64>(5)? as u64,
                    },
                })
            })
            .map_err(sql_error)?;
        rows.collect::<Result<_, _>>().map_err(sql_error)
    }

    /// Tokens (prompt + completion) `key` used since `since` (unix seconds), flushed
    /// rows only (blocks): what a restarted server's `daily_tokens` starts from.
    pub fn tokens_since(&self, key: &str, since: i64) -> Result<u64, String> {
        let db = self.db();
        let total: Option<i64> = db
            .query_row(
                "SELECT SUM(prompt_tokens + completion_tokens) FROM usage WHERE key = ?1 AND hour >= ?2",
                params![key, since.div_euclid(3600)],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql_error)?
            .flatten();
        Ok(total.unwrap_or(0).max(0) as u64)
    }

    /// Keys made at run time (blocks).
    pub fn keys(&self) -> Result<Vec<StoredKey>, String> {
        let db = self.db();
        let mut query = db
            .prepare_cached("SELECT name, digest, settings, created FROM keys ORDER BY name")
            .map_err(sql_error)?;
        let rows = query
            .query_map([], |r| {
                let digest: Vec<u8> = r.get(1)?;
                let mut fixed = [0u8; 32];
                if digest.len() == 32 {
                    fixed.copy_from_slice(&digest);
                }
                Ok(StoredKey {
                    name: r.get(0)?,
                    digest: fixed,
                    settings: r.get(2)?,
                    created: r.get(3)?,
                })
            })
            .map_err(sql_error)?;
        rows.collect::<Result<_, _>>().map_err(sql_error)
    }

    /// Stores a key made at run time (blocks); `false` when the name is taken.
    pub fn add_key(&self, key: &StoredKey) -> Result<bool, String> {
        let db = self.db();
        let added = db
            .execute(
                "INSERT OR IGNORE INTO keys (name, digest, settings, created) VALUES (?1, ?2, ?3, ?4)",
                params![key.name, key.digest.as_slice(), key.settings, key.created],
            )
            .map_err(sql_error)?;
        Ok(added == 1)
    }

    /// Removes a key made at run time (blocks); `false` when there was none.
    pub fn delete_key(&self, name: &str) -> Result<bool, String> {
        let db = self.db();
        db.execute("DELETE FROM disabled_keys WHERE name = ?1", params![name])
            .map_err(sql_error)?;
        let removed = db
            .execute("DELETE FROM keys WHERE name = ?1", params![name])
            .map_err(sql_error)?;
        Ok(removed == 1)
    }

    /// Names of the disabled keys (blocks).
    pub fn disabled_keys(&self) -> Result<Vec<String>, String> {
        let db = self.db();
        let mut query = db
            .prepare_cached("SELECT name FROM disabled_keys ORDER BY name")
            .map_err(sql_error)?;
        let rows = query.query_map([], |r| r.get(0)).map_err(sql_error)?;
        rows.collect::<Result<_, _>>().map_err(sql_error)
    }

    /// Disables or enables a key by name (blocks).
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), String> {
        let db = self.db();
        if disabled {
            db.execute(
                "INSERT OR IGNORE INTO disabled_keys (name) VALUES (?1)",
                params![name],
            )
        } else {
            db.execute("DELETE FROM disabled_keys WHERE name = ?1", params![name])
        }
        .map_err(sql_error)?;
        Ok(())
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Parses `since`: unix seconds, `YYYY-MM-DD` (UTC midnight) or RFC 3339
/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_since(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<i64>() {
        return Some(secs);
    }
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut secs = days_from_civil(year, month, day) * 86_400;
    if let Some(time) = time {
        let time = time
            .strip_suffix('Z')
            .or_else(|| time.strip_suffix("+00:00"))?;
        let mut hms = time.splitn(3, ':');
        let h: i64 = hms.next()?.parse().ok()?;
        let m: i64 = hms.next()?.parse().ok()?;
        let s: f64 = hms.next().unwrap_or("0").parse().ok()?;
        if !(0..24).contains(&h) || !(0..60).contains(&m) || !(0.0..61.0).contains(&s) {
            return None;
        }
        secs += h * 3600 + m * 60 + s as i64;
    }
    Some(secs)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, prompt: u64) -> Counts {
        Counts {
            requests,
            errors: 0,
            prompt_tokens: prompt,
            completion_tokens: 1,
        }
    }

    #[test]
    fn usage_is_summed_per_key_and_model_and_kept_in_the_file() {
        let dir = std::env::temp_dir().join(format!("llamagate-usage-{}", uuid::Uuid::new_v4()));
        let path = dir.join("store.db");
        {
            let store = UsageStore::open(Some(&path)).unwrap();
            store.record(7200, "laptop", "m", counts(1, 10));
            store.record(7300, "laptop", "m", counts(1, 5));
            store.flush().unwrap();
            store.record(3600 * 5, "laptop", "m", counts(1, 1));
            store.record(3600 * 5, "tablet", "m", counts(2, 3));
            // Not flushed yet: usage_since flushes first.
            let rows = store.usage_since(0).unwrap();
            assert_eq!(rows.len(), 2);
            assert_eq!(rows[0].counts.requests, 3);
            assert_eq!(rows[0].counts.prompt_tokens, 16);
            assert_eq!(store.usage_since(3600 * 3).unwrap()[0].counts.requests, 1);
        }
        let reopened = UsageStore::open(Some(&path)).unwrap();
        assert_eq!(reopened.usage_since(0).unwrap()[1].counts.requests, 2);
        assert_eq!(reopened.tokens_since("tablet", 0).unwrap(), 4);
        let key = StoredKey {
            name: "phone".into(),
            digest: [7; 32],
            settings: "{}".into(),
            created: 1,
        };
        assert!(reopened.add_key(&key).unwrap());
        assert!(!reopened.add_key(&key).unwrap(), "names are unique");
        reopened.set_disabled("phone", true).unwrap();
        assert_eq!(reopened.disabled_keys().unwrap(), ["phone"]);
        assert_eq!(reopened.keys().unwrap(), [key]);
        assert!(reopened.delete_key("phone").unwrap());
        assert!(reopened.disabled_keys().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_flush_keeps_the_counts_for_the_next() {
        let store = UsageStore::open(None).unwrap();
        store.record(0, "k", "m", counts(2, 7));
        store.db().execute_batch("DROP TABLE usage").unwrap();
        assert!(store.flush().is_err());
        store.record(1, "k", "m", counts(1, 1));
        store.db().execute_batch(SCHEMA).unwrap();
        let rows = store.usage_since(0).unwrap();
        assert_eq!(
            (rows[0].counts.requests, rows[0].counts.prompt_tokens),
            (3, 8)
        );
    }

    #[test]
    fn since_takes_seconds_dates_and_times() {
        assert_eq!(parse_since("86400"), Some(86_400));
        assert_eq!(parse_since("1970-01-02"), Some(86_400));
        assert_eq!(parse_since("2026-12-03"), Some(1_796_256_000));
        assert_eq!(parse_since("2026-12-03T01:02:03Z"), Some(1_796_259_723));
        assert_eq!(parse_since("2026-13-01"), None);
        assert_eq!(parse_since("yesterday"), None);
        assert_eq!(parse_since("2026-12-03T01:02:03+02:00"), None);
    }
}
