//! API keys: which route groups need one, and checking a presented key in constant time.
//!
//! Policy is never derived from a path string: every route is mounted inside a
//! [`RouteGroup`] (an actix scope or resource wrapped by `api::middleware::require`), so any
//! spelling the router accepts for a route meets that route's policy.

use crate::config::{AuthSettings, Secret};

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
    settings: AuthSettings,
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
    /// From the resolved `[auth]` settings.
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            api: settings.api_keys.clone(),
            admin: settings.admin_keys.clone(),
            settings: settings.clone(),
        }
    }

    /// Whether any API key is configured.
    pub fn has_api_keys(&self) -> bool {
        !self.api.is_empty()
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
        match (access, presented) {
            (Access::Open, _) => true,
            (_, None) => false,
            (Access::Key, Some(k)) => contains(&self.api, k) | contains(&self.admin, k),
            (Access::Admin, Some(k)) => contains(&self.admin, k),
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
