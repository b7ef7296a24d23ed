//! API keys: which route groups need one, and checking a presented key in constant time.
//!
//! Policy is never derived from a path string: every route is mounted inside a
//! [`RouteGroup`] (an actix scope or resource wrapped by `api::middleware::require`), so any
//! spelling the router accepts for a route meets that route's policy.

use std::sync::Arc;

use sha2::Digest;

use crate::config::{AuthSettings, Secret};

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

/// The keys and route rules in force.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    api: Vec<Secret>,
    admin: Vec<Secret>,
    named: Vec<Arc<NamedKey>>,
    settings: AuthSettings,
}

/// A named key: the digest it is checked against, its allow-list and its limits.
#[derive(Debug)]
pub struct NamedKey {
    /// SHA-256 of the key.
    digest: [u8; 32],
    /// Models (names or aliases) it may use; `None` = all.
    pub models: Option<Vec<String>>,
    /// Its limits and what it used (its name is `limiter.name`).
    pub limiter: Arc<Limiter>,
}

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
            Self::Named(key) => key.models.as_deref(),
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
                Some(NamedKey {
                    digest: key.digest().ok()?,
                    models: key.models.clone(),
                    limiter: Arc::new(Limiter::new(key)),
                })
            })
            .collect();
        Self {
            api: settings.api_keys.clone(),
            admin: settings.admin_keys.clone(),
            named: named_arcs(named),
            settings: settings.clone(),
        }
    }

    /// Whether any API key (unnamed or named) is configured.
    pub fn has_api_keys(&self) -> bool {
        !self.api.is_empty() || !self.named.is_empty()
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
            let named = self.named.iter().fold(None, |hit, key| {
                let matched = constant_time_eq(&key.digest, &digest);
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

fn named_arcs(keys: Vec<NamedKey>) -> Vec<Arc<NamedKey>> {
    keys.into_iter().map(Arc::new).collect()
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
