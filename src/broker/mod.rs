//! The broker's object model: virtual hosts and users, shared by every
//! connection and by management. Registries are read on the hot path and
//! written rarely.

pub mod dead_letter;
pub mod users;
pub mod vhost;

use crate::config::Config;
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use users::User;
use vhost::VHost;

/// Broker-wide counters (management and metrics read these).
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicUsize,
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub channels: AtomicUsize,
    pub published: AtomicU64,
    pub unroutable_returned: AtomicU64,
    pub unroutable_dropped: AtomicU64,
    pub confirmed: AtomicU64,
}

pub struct Broker {
    pub config: Arc<Config>,
    pub vhosts: DashMap<String, Arc<VHost>>,
    pub users: DashMap<String, User>,
    pub counters: Counters,
    next_conn_id: AtomicU64,
}

impl Broker {
    pub fn new(config: Config) -> Arc<Self> {
        let b = Broker {
            vhosts: DashMap::new(),
            users: DashMap::new(),
            counters: Counters::default(),
            next_conn_id: AtomicU64::new(1),
            config: Arc::new(config),
        };
        b.vhosts.insert("/".to_string(), Arc::new(VHost::new("/")));
        let a = &b.config.auth;
        b.users.insert(
            a.default_user.clone(),
            User::new(&a.default_user, &a.default_pass, vec!["administrator".to_string()]),
        );
        Arc::new(b)
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Checks a login. `loopback` says whether the peer is on a loopback address.
    pub fn authenticate(&self, user: &str, password: &str, loopback: bool) -> bool {
        let Some(u) = self.users.get(user) else { return false };
        if !loopback && self.config.auth.loopback_users.iter().any(|l| l == user) {
            return false;
        }
        u.check_password(password)
    }
}
