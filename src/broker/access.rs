//! Access control as RabbitMQ's internal backend does it
//! (`rabbit_auth_backend_internal`): per (user, vhost) configure / write /
//! read regexes matched (unanchored) against resource names, an empty regex
//! meaning "nothing"; topic permissions on routing keys of topic exchanges,
//! with `{username}` / `{vhost}` expanded. Permission changes bump a
//! generation so connections can cache their lookups.

use crate::error::{AmqpError, AmqpResult};
use crate::store::definitions::{PermissionDef, TopicPermissionDef};
use dashmap::DashMap;
use regex::Regex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// A compiled permission regex. RabbitMQ replaces an empty one with `^$`
/// (it matches only the empty name, which in practice means "nothing").
#[derive(Debug, Clone)]
pub struct Pattern(Regex);

impl Pattern {
    /// Compiles `re`; an invalid regex is a 400 in management, never a panic.
    pub fn new(re: &str) -> Result<Self, String> {
        let re = if re.is_empty() { "^$" } else { re };
        match Regex::new(re) {
            Ok(r) => Ok(Pattern(r)),
            // PCRE reads a `{` that starts no valid quantifier as a literal
            // (`^{client_id}` in a topic permission); Rust's regex does not.
            Err(e) => Regex::new(&re.replace('{', "\\{").replace('}', "\\}"))
                .map(Pattern)
                .map_err(|_| format!("invalid regex '{re}': {e}")),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        self.0.is_match(name)
    }
}

/// One user's permissions in one vhost.
#[derive(Debug, Clone)]
pub struct Permission {
    pub def: PermissionDef,
    configure: Pattern,
    write: Pattern,
    read: Pattern,
}

impl Permission {
    pub fn new(def: PermissionDef) -> Result<Self, String> {
        Ok(Permission {
            configure: Pattern::new(&def.configure)?,
            write: Pattern::new(&def.write)?,
            read: Pattern::new(&def.read)?,
            def,
        })
    }

    pub fn allows(&self, access: Access, name: &str) -> bool {
        match access {
            Access::Configure => self.configure.matches(name),
            Access::Write => self.write.matches(name),
            Access::Read => self.read.matches(name),
        }
    }
}

/// One user's topic permission on one exchange. The regexes may contain
/// variables, so they are compiled at check time (topic permissions are rare).
#[derive(Debug, Clone)]
pub struct TopicPermission {
    pub def: TopicPermissionDef,
}

/// The name RabbitMQ checks for the default exchange.
pub fn checked_exchange_name(name: &str) -> &str {
    if name.is_empty() { "amq.default" } else { name }
}

/// Every permission in the broker.
#[derive(Debug, Default)]
pub struct AccessControl {
    /// Keyed by (user, vhost).
    permissions: DashMap<(String, String), Arc<Permission>>,
    /// Keyed by (user, vhost, exchange).
    topic: DashMap<(String, String, String), TopicPermission>,
    /// Whether any topic permission exists (the publish path skips the
    /// lookup when none does, which is nearly always).
    any_topic: AtomicBool,
    generation: AtomicU64,
}

impl AccessControl {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.any_topic.store(!self.topic.is_empty(), Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn set(&self, p: Permission) {
        self.permissions.insert((p.def.user.clone(), p.def.vhost.clone()), Arc::new(p));
        self.bump();
    }

    pub fn clear(&self, user: &str, vhost: &str) -> bool {
        let gone = self.permissions.remove(&(user.to_string(), vhost.to_string())).is_some();
        self.bump();
        gone
    }

    pub fn get(&self, user: &str, vhost: &str) -> Option<Arc<Permission>> {
        self.permissions.get(&(user.to_string(), vhost.to_string())).map(|p| p.clone())
    }

    /// All permissions, sorted by (vhost, user) for stable listings.
    pub fn all(&self) -> Vec<PermissionDef> {
        let mut out: Vec<PermissionDef> = self.permissions.iter().map(|p| p.def.clone()).collect();
        out.sort_by(|a, b| (&a.vhost, &a.user).cmp(&(&b.vhost, &b.user)));
        out
    }

    pub fn set_topic(&self, def: TopicPermissionDef) {
        self.topic
            .insert((def.user.clone(), def.vhost.clone(), def.exchange.clone()), TopicPermission { def });
        self.bump();
    }

    pub fn clear_topic(&self, user: &str, vhost: &str, exchange: Option<&str>) -> bool {
        let before = self.topic.len();
        self.topic.retain(|(u, v, x), _| !(u == user && v == vhost && exchange.is_none_or(|e| e == x)));
        self.bump();
        self.topic.len() != before
    }

    pub fn all_topic(&self) -> Vec<TopicPermissionDef> {
        let mut out: Vec<TopicPermissionDef> = self.topic.iter().map(|p| p.def.clone()).collect();
        out.sort_by(|a, b| (&a.vhost, &a.user, &a.exchange).cmp(&(&b.vhost, &b.user, &b.exchange)));
        out
    }

    /// Forgets everything of a deleted user (`user`) or vhost (`vhost`).
    pub fn forget(&self, user: Option<&str>, vhost: Option<&str>) {
        let hit = |u: &str, v: &str| user.is_some_and(|x| x == u) || vhost.is_some_and(|x| x == v);
        self.permissions.retain(|(u, v), _| !hit(u, v));
        self.topic.retain(|(u, v, _), _| !hit(u, v));
        self.bump();
    }

    /// RabbitMQ's topic check: allowed unless a topic permission exists for
    /// this exchange and its regex (variables expanded) does not match.
    pub fn check_topic(
        &self,
        user: &str,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        access: Access,
    ) -> AmqpResult<()> {
        if !self.any_topic.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some(tp) = self.topic.get(&(user.to_string(), vhost.to_string(), exchange.to_string())) else {
            return Ok(());
        };
        let raw = if access == Access::Write { &tp.def.write } else { &tp.def.read };
        let expanded = raw.replace("{username}", user).replace("{vhost}", vhost);
        let ok = Pattern::new(&expanded).is_ok_and(|p| p.matches(routing_key));
        if ok {
            Ok(())
        } else {
            Err(AmqpError::access_refused(format!(
                "{} access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'",
                access.as_str()
            )))
        }
    }
}

/// The refusal RabbitMQ (3.12+) sends for a missing resource permission.
pub fn refused(access: Access, kind: &str, name: &str, vhost: &str, user: &str) -> AmqpError {
    AmqpError::access_refused(format!(
        "{} access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'",
        access.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(c: &str, w: &str, r: &str) -> Permission {
        Permission::new(PermissionDef {
            user: "u".into(),
            vhost: "/".into(),
            configure: c.into(),
            write: w.into(),
            read: r.into(),
        })
        .unwrap()
    }

    #[test]
    fn unanchored_regexes_and_empty_means_nothing() {
        let p = perm("^tasks\\.", "", ".*");
        assert!(p.allows(Access::Configure, "tasks.a"));
        assert!(!p.allows(Access::Configure, "x.tasks.a"));
        assert!(!p.allows(Access::Write, "anything"));
        // Empty means `^$`: only the empty name.
        assert!(p.allows(Access::Write, ""));
        assert!(p.allows(Access::Read, ""));
        // Unanchored: a bare word matches anywhere in the name.
        assert!(perm("ask", "", "").allows(Access::Configure, "tasks"));
    }

    #[test]
    fn topic_permissions_expand_variables_and_default_to_allowed() {
        let ac = AccessControl::default();
        assert!(ac.check_topic("u", "/", "amq.topic", "any", Access::Write).is_ok());
        ac.set_topic(TopicPermissionDef {
            user: "u".into(),
            vhost: "/".into(),
            exchange: "amq.topic".into(),
            write: "^{username}\\.".into(),
            read: ".*".into(),
        });
        assert!(ac.check_topic("u", "/", "amq.topic", "u.news", Access::Write).is_ok());
        let e = ac.check_topic("u", "/", "amq.topic", "v.news", Access::Write).unwrap_err();
        assert_eq!(
            e.reply_text(),
            "ACCESS_REFUSED - write access to topic 'v.news' in exchange 'amq.topic' in vhost '/' refused for user 'u'"
        );
        assert!(Pattern::new("(").is_err());
    }
}
