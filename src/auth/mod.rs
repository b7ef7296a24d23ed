//! API keys: which route groups need one, and checking a presented key in constant time.
//!
//! Policy is never derived from a path string: every route is mounted inside a
//! [`RouteGroup`] (an actix scope or resource wrapped by `api::middleware::require`), so any
//! spelling the router accepts for a route meets that route's policy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::config::{AuthSettings, NamedKeySettings, Secret};

pub mod limits;

use limits::Limiter;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Open,
    /// An API key (or an admin key).
    Key,
    /// An admin key; or, when none are configured, a loopback client.
    Admin,
}

/// A group of routes that share one access rule; each is declared where its routes are
/// mounted (`api::configure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteGroup {
    /// `/v1/*`: the OpenAI API. Needs a key whenever any key is configured.
    Api,
    /// `/admin/*`: needs an admin key; without admin keys, only loopback clients.
    Admin,
    /// `/metrics`: needs a key when `protect_metrics` is set.
    Metrics,
    /// `/health`: needs a key when `protect_health` is set.
    Health,
    /// `/docs/*` and `/openapi.json`: need a key when `protect_docs` is set.
    Docs,
    /// `/`, the chat page: needs a key when `protect_ui` is set.
    Ui,
}

/// The keys and route rules in force. Named keys can be added, disabled and removed
/// while serving (`/admin/keys`); the lock around them is never held across I/O.
#[derive(Debug, Default)]
pub struct KeyRing {
    api: Vec<Secret>,
    admin: Vec<Secret>,
    named: RwLock<Vec<Arc<NamedKey>>>,
    settings: AuthSettings,
}

/// A named key's allow-list and limits, as `POST /admin/keys` takes them and
/// `GET /admin/keys` shows them.
/// (Open to more fields: it is flattened into `KeyInfo`, and read back from the store.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeySpec {
    /// Models (names or aliases) it may use; absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Tokens (prompt + completion) per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_tokens: Option<u64>,
}

impl KeySpec {
    /// The allow-list and limits of a configured key.
    pub fn of(key: &NamedKeySettings) -> Self {
        Self {
            models: key.models.clone(),
            rpm: key.rpm,
            tpm: key.tpm,
            max_concurrent: key.max_concurrent,
            daily_tokens: key.daily_tokens,
        }
    }

    /// The settings of a key named `name` that accepts `key` (text or `sha256:HEX`).
    pub fn settings(&self, name: &str, key: String) -> NamedKeySettings {
        NamedKeySettings {
            name: name.to_string(),
            key: Secret(key),
            models: self.models.clone(),
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrent: self.max_concurrent,
            daily_tokens: self.daily_tokens,
        }
    }
}

/// Where a named key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// `[[auth.keys]]` in the configuration file (removed only there).
    Config,
    /// `POST /admin/keys`, at this Unix second (kept in the usage store).
    Runtime {
        /// Unix seconds it was made.
        created: i64,
    },
}

/// A named key: the digest it is checked against, its allow-list and its limits.
#[derive(Debug)]
pub struct NamedKey {
    /// SHA-256 of the key.
    digest: [u8; 32],
    /// Its limits and what it used (its name is `limiter.name`).
    pub limiter: Arc<Limiter>,
    /// Its allow-list and limits as set.
    pub spec: KeySpec,
    /// Where it comes from.
    pub origin: KeyOrigin,
    disabled: AtomicBool,
}

impl NamedKey {
    /// A key named like `settings` that accepts `digest`.
    pub fn new(settings: &NamedKeySettings, digest: [u8; 32], origin: KeyOrigin) -> Self {
        Self {
            digest,
            limiter: Arc::new(Limiter::new(settings)),
            spec: KeySpec::of(settings),
            origin,
            disabled: AtomicBool::new(false),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.limiter.name
    }

    /// Whether it is disabled (refused as an unknown key would be).
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// Disables or enables it.
    pub fn set_disabled(&self, disabled: bool) {
        self.disabled.store(disabled, Ordering::Relaxed);
    }
}

/// Why a named key could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddKeyError {
    /// Another key has that name.
    NameTaken,
    /// The ring holds [`MAX_NAMED_KEYS`] already.
    Full,
}

/// The most named keys a ring holds (each request's key is compared with all of them).
pub const MAX_NAMED_KEYS: usize = 1024;

/// Who sent a request, as its key says.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No key (the route is open).
    Anonymous,
    /// An unnamed API key (`api_keys`, `LLAMAGATE_API_KEYS`, `api_keys_file`).
    Unnamed,
    /// An admin key.
    Admin,
    /// A named key (`[[auth.keys]]`).
    Named(Arc<NamedKey>),
}

impl Caller {
    /// Its name in metrics and usage: the key's name, else `unnamed`, `admin` or
    /// `anonymous`.
    pub fn label(&self) -> &str {
        match self {
            Self::Anonymous => "anonymous",
            Self::Unnamed => "unnamed",
            Self::Admin => "admin",
            Self::Named(key) => &key.limiter.name,
        }
    }

    /// The named key's allow-list, if it has one.
    pub fn allowed_models(&self) -> Option<&[String]> {
        match self {
            Self::Named(key) => key.spec.models.as_deref(),
            _ => None,
        }
    }
}

/// Compares two byte strings without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn contains(keys: &[Secret], presented: &str) -> bool {
    // Every key is compared, so timing does not tell which one (or whether any) matched.
    keys.iter().fold(false, |hit, k| {
        constant_time_eq(k.0.as_bytes(), presented.as_bytes()) | hit
    })
}

impl KeyRing {
    /// From the resolved `[auth]` settings (whose named keys were validated, so their
    /// digests can be read; one that cannot is left out).
    pub fn new(settings: &AuthSettings) -> Self {
        let named = settings
            .keys
            .iter()
            .filter_map(|key| {
                Some(Arc::new(NamedKey::new(
                    key,
                    key.digest().ok()?,
                    KeyOrigin::Config,
                )))
            })
            .collect();
        Self {
            api: settings.api_keys.clone(),
            admin: settings.admin_keys.clone(),
            named: RwLock::new(named),
            settings: settings.clone(),
        }
    }

    fn named_read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<NamedKey>>> {
        self.named.read().unwrap_or_else(|e| e.into_inner())
    }

    fn named_write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<NamedKey>>> {
        self.named.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The named keys now, configured ones first.
    pub fn named(&self) -> Vec<Arc<NamedKey>> {
        self.named_read().clone()
    }

    /// The named key called `name`.
    pub fn find(&self, name: &str) -> Option<Arc<NamedKey>> {
        self.named_read().iter().find(|k| k.name() == name).cloned()
    }

    /// Adds a named key (made at run time, or read back from the store).
    pub fn add(&self, key: NamedKey) -> Result<Arc<NamedKey>, AddKeyError> {
        let mut named = self.named_write();
        if named.iter().any(|k| k.name() == key.name()) {
            return Err(AddKeyError::NameTaken);
        }
        if named.len() >= MAX_NAMED_KEYS {
            return Err(AddKeyError::Full);
        }
        let key = Arc::new(key);
        named.push(key.clone());
        Ok(key)
    }

    /// Removes the named key called `name` (requests it has running finish).
    pub fn remove(&self, name: &str) -> Option<Arc<NamedKey>> {
        let mut named = self.named_write();
        let at = named.iter().position(|k| k.name() == name)?;
        Some(named.remove(at))
    }

    /// Whether any API key (unnamed or named) is configured.
    pub fn has_api_keys(&self) -> bool {
        !self.api.is_empty() || !self.named_read().is_empty()
    }

    /// Whether `presented` is a named key that is disabled (to say so when refusing it).
    pub fn is_disabled(&self, presented: &str) -> bool {
        let digest: [u8; 32] = sha2::Sha256::digest(presented.as_bytes()).into();
        self.named_read()
            .iter()
            .any(|k| k.is_disabled() && constant_time_eq(&k.digest, &digest))
    }

    /// Whether any admin key is configured.
    pub fn has_admin_keys(&self) -> bool {
        !self.admin.is_empty()
    }

    /// What a route of `group` needs.
    pub fn access(&self, group: RouteGroup) -> Access {
        let any_key = self.has_api_keys() || self.has_admin_keys();
        let protected = match group {
            RouteGroup::Admin => return Access::Admin,
            RouteGroup::Api => true,
            RouteGroup::Metrics => self.settings.protect_metrics,
            RouteGroup::Health => self.settings.protect_health,
            RouteGroup::Docs => self.settings.protect_docs,
            RouteGroup::Ui => self.settings.protect_ui,
        };
        if protected && any_key {
            Access::Key
        } else {
            Access::Open
        }
    }

    /// Whether `presented` opens a route that needs `access`.
    pub fn allows(&self, access: Access, presented: Option<&str>) -> bool {
        self.caller(access, presented).is_some()
    }

    /// Who `presented` is, when it opens a route that needs `access`; `None` when it does
    /// not. Every key is compared in constant time, named ones by their SHA-256.
    pub fn caller(&self, access: Access, presented: Option<&str>) -> Option<Caller> {
        let identify = |k: &str| {
            let admin = contains(&self.admin, k);
            let unnamed = contains(&self.api, k);
            let digest: [u8; 32] = sha2::Sha256::digest(k.as_bytes()).into();
            // Disabled keys are compared too (and then refused), so timing tells nothing.
            let named = self.named_read().iter().fold(None, |hit, key| {
                let matched = constant_time_eq(&key.digest, &digest) & !key.is_disabled();
                hit.or(matched.then(|| key.clone()))
            });
            (admin, unnamed, named)
        };
        match (access, presented) {
            (Access::Open, None) => Some(Caller::Anonymous),
            (Access::Open, Some(k)) => Some(match identify(k) {
                (true, _, _) => Caller::Admin,
                (_, _, Some(key)) => Caller::Named(key),
                (_, true, _) => Caller::Unnamed,
                _ => Caller::Anonymous,
            }),
            (_, None) => None,
            (Access::Key, Some(k)) => match identify(k) {
                (true, _, _) => Some(Caller::Admin),
                (_, _, Some(key)) => Some(Caller::Named(key)),
                (_, true, _) => Some(Caller::Unnamed),
                _ => None,
            },
            (Access::Admin, Some(k)) => identify(k).0.then_some(Caller::Admin),
        }
    }
}

/// The key in an `Authorization: Bearer <key>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, key) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(api: &[&str], admin: &[&str]) -> KeyRing {
        KeyRing::new(&AuthSettings {
            api_keys: api.iter().map(|k| Secret(k.to_string())).collect(),
            admin_keys: admin.iter().map(|k| Secret(k.to_string())).collect(),
            protect_metrics: true,
            ..Default::default()
        })
    }

    #[test]
    fn routes_and_keys() {
        let r = ring(&["user-key-1"], &["admin-key-1"]);
        assert_eq!(r.access(RouteGroup::Api), Access::Key);
        assert_eq!(r.access(RouteGroup::Metrics), Access::Key);
        assert_eq!(r.access(RouteGroup::Health), Access::Open);
        assert_eq!(r.access(RouteGroup::Docs), Access::Open);
        assert_eq!(r.access(RouteGroup::Admin), Access::Admin);
        assert!(r.allows(Access::Key, Some("user-key-1")));
        assert!(r.allows(Access::Key, Some("admin-key-1")));
        assert!(!r.allows(Access::Key, Some("user-key-2")));
        assert!(!r.allows(Access::Key, None));
        assert!(!r.allows(Access::Admin, Some("user-key-1")));
        assert!(r.allows(Access::Admin, Some("admin-key-1")));
    }

    #[test]
    fn without_keys_everything_but_admin_is_open() {
        let r = ring(&[], &[]);
        assert_eq!(r.access(RouteGroup::Api), Access::Open);
        assert_eq!(r.access(RouteGroup::Metrics), Access::Open);
        assert_eq!(r.access(RouteGroup::Admin), Access::Admin);
    }

    #[test]
    fn named_keys_are_known_by_name_whether_written_plain_or_hashed() {
        use sha2::Digest;
        let hashed: String = sha2::Sha256::digest(b"tablet-key-2")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = |name: &str, key: String| crate::config::NamedKeySettings {
            name: name.into(),
            key: Secret(key),
            models: Some(vec!["small".into()]),
            rpm: Some(3),
            tpm: None,
            max_concurrent: None,
            daily_tokens: None,
        };
        let r = KeyRing::new(&AuthSettings {
            api_keys: vec![Secret("plain-key-1".into())],
            admin_keys: vec![Secret("admin-key-1".into())],
            keys: vec![
                key("laptop", "laptop-key-1".into()),
                key("tablet", format!("sha256:{hashed}")),
            ],
            ..Default::default()
        });
        assert!(r.has_api_keys());
        let name = |k: &str| {
            r.caller(Access::Key, Some(k))
                .map(|c| c.label().to_string())
        };
        assert_eq!(name("laptop-key-1").as_deref(), Some("laptop"));
        assert_eq!(name("tablet-key-2").as_deref(), Some("tablet"));
        assert_eq!(name("plain-key-1").as_deref(), Some("unnamed"));
        assert_eq!(name("admin-key-1").as_deref(), Some("admin"));
        assert_eq!(
            name(&format!("sha256:{hashed}")),
            None,
            "the digest is no key"
        );
        assert_eq!(name("tablet-key-3"), None);
        assert!(!r.allows(Access::Admin, Some("laptop-key-1")));
        let caller = r.caller(Access::Key, Some("tablet-key-2")).unwrap();
        assert_eq!(caller.allowed_models(), Some(&["small".to_string()][..]));

        // Disabled: refused like an unknown key; enabled again: back.
        r.find("laptop").unwrap().set_disabled(true);
        assert_eq!(name("laptop-key-1"), None);
        assert!(r.is_disabled("laptop-key-1"));
        r.find("laptop").unwrap().set_disabled(false);
        assert_eq!(name("laptop-key-1").as_deref(), Some("laptop"));

        // Added at run time, names unique; removed.
        let spec = KeySpec {
            rpm: Some(1),
            ..Default::default()
        };
        let digest: [u8; 32] = sha2::Sha256::digest(b"phone-key-12").into();
        let runtime = |name: &str| {
            NamedKey::new(
                &spec.settings(name, "unused".into()),
                digest,
                KeyOrigin::Runtime { created: 1 },
            )
        };
        assert_eq!(
            r.add(runtime("laptop")).unwrap_err(),
            AddKeyError::NameTaken
        );
        r.add(runtime("phone")).unwrap();
        assert_eq!(name("phone-key-12").as_deref(), Some("phone"));
        assert_eq!(r.named().len(), 3);
        assert!(r.remove("phone").is_some());
        assert_eq!(name("phone-key-12"), None);
    }

    #[test]
    fn the_first_named_key_made_at_run_time_closes_an_open_api() {
        let r = ring(&[], &[]);
        assert_eq!(r.access(RouteGroup::Api), Access::Open);
        let spec = KeySpec::default();
        r.add(NamedKey::new(
            &spec.settings("phone", "unused".into()),
            [1; 32],
            KeyOrigin::Runtime { created: 1 },
        ))
        .unwrap();
        assert_eq!(r.access(RouteGroup::Api), Access::Key);
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn secrets_do_not_print() {
        let s = format!("{:?}", Secret("hunter2hunter2".into()));
        assert!(!s.contains("hunter2"));
    }
}
