//! The broker's object model: virtual hosts and users, shared by every
//! connection and by management. Registries are read on the hot path and
//! written rarely.

pub mod access;
pub mod alarms;
pub mod dead_letter;
pub mod policy;
pub mod rates;
pub mod registry;
pub mod timers;
pub mod users;
use timers::Timers;
pub mod vhost;

use crate::config::Config;
use crate::queue::Queue;
use crate::store::definitions::{self, Definitions, PermissionDef, UserDef, VHostDef};
use crate::store::{MessageStore, Recovered, Stores};
use access::{AccessControl, Permission};
use dashmap::DashMap;
use policy::Policy;
use std::collections::HashMap;
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
    pub channels_opened: AtomicU64,
    pub channels_closed: AtomicU64,
    /// `basic.get` that found the queue empty.
    pub get_empty: AtomicU64,
    pub published: AtomicU64,
    pub unroutable_returned: AtomicU64,
    pub unroutable_dropped: AtomicU64,
    /// Shared with every connection's outbox: confirms are counted where
    /// they are encoded (the reader or the persister thread).
    pub confirmed: Arc<AtomicU64>,
    /// Login attempts (`/api/auth/attempts`): AMQP and HTTP, (succeeded, failed).
    pub auth_amqp: (AtomicU64, AtomicU64),
    pub auth_http: (AtomicU64, AtomicU64),
}

impl Counters {
    /// Counts a login attempt over `amqp` (else HTTP).
    pub fn count_auth(&self, amqp: bool, ok: bool) {
        let (good, bad) = if amqp { &self.auth_amqp } else { &self.auth_http };
        if ok { good } else { bad }.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Broker {
    pub config: Arc<Config>,
    pub vhosts: DashMap<String, Arc<VHost>>,
    pub users: DashMap<String, User>,
    pub access: AccessControl,
    pub registry: registry::Registry,
    pub counters: Counters,
    /// Sampled broker-wide rates (management overview).
    pub rates: rates::OverviewRates,
    pub store: Arc<Stores>,
    timers: Arc<Timers>,
    next_conn_id: AtomicU64,
    /// When the broker started (uptime in management).
    pub started: std::time::Instant,
    /// The ports actually bound (AMQP, management, Prometheus); a configured
    /// port 0 becomes the one the OS chose.
    pub ports: std::sync::OnceLock<(u16, u16, u16)>,
    /// The AMQPS port as bound, when TLS is on.
    pub amqps_port: std::sync::OnceLock<Option<u16>>,
    /// Memory and disk alarms (publishers are blocked while one is on).
    pub alarms: Arc<alarms::Alarms>,
}

impl Broker {
    /// The overview's counters, in `rates::OVERVIEW_RATES` order: message
    /// counters (delivery side summed over queues), queue totals, churn.
    pub fn overview_counters(&self) -> [u64; 24] {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (mut deliver, mut deliver_no_ack, mut get, mut get_no_ack) = (0, 0, 0, 0);
        let (mut ack, mut redeliver, mut ready, mut unacked) = (0, 0, 0, 0);
        let (mut disk_reads, mut disk_writes) = (0, 0);
        let mut churn = [0u64; 3];
        for v in self.vhosts.iter() {
            for (i, n) in v.churn.iter().enumerate() {
                churn[i] += l(n);
            }
            for q in v.queues.iter() {
                let s = &q.stats;
                deliver += l(&s.deliver);
                deliver_no_ack += l(&s.deliver_no_ack);
                get += l(&s.get);
                get_no_ack += l(&s.get_no_ack);
                ack += l(&s.acked);
                redeliver += l(&s.redelivered);
                disk_reads += l(&s.disk_reads);
                disk_writes += l(&s.disk_writes);
                if !q.name.starts_with(crate::exchange::DELAY_QUEUE_PREFIX) {
                    let (r, u, _, _) = q.counts();
                    ready += r;
                    unacked += u;
                }
            }
        }
        [
            ack,
            l(&c.confirmed),
            deliver,
            deliver + deliver_no_ack + get + get_no_ack,
            deliver_no_ack,
            l(&c.unroutable_dropped),
            get,
            l(&c.get_empty),
            get_no_ack,
            l(&c.published),
            redeliver,
            l(&c.unroutable_returned),
            disk_reads,
            disk_writes,
            ready + unacked,
            ready,
            unacked,
            l(&c.connections_opened),
            l(&c.connections_closed),
            l(&c.channels_opened),
            l(&c.channels_closed),
            churn[1],
            churn[0],
            churn[2],
        ]
    }

    /// (AMQP, management) ports as bound, else as configured.
    pub fn listen_ports(&self) -> (u16, u16) {
        self.ports.get().map(|p| (p.0, p.1)).unwrap_or((self.config.amqp.port, self.config.management.port))
    }
}

impl Broker {
    /// Opens the data directory and restores everything durable: vhosts,
    /// users, exchanges, queues, bindings, then the unsettled persistent
    /// messages in log order. Any store error stops startup.
    pub fn open(config: Config) -> Result<Arc<Self>, String> {
        let dir = config.storage.data_dir.clone();
        let (defs, loaded) =
            Definitions::open_checked(&dir.join("definitions"), config.storage.definitions_cache)
                .map_err(|e| e.to_string())?;
        let (messages, recovered) = MessageStore::open(
            &dir.join("messages"),
            config.storage.segment_size,
            config.memory.queue_budget,
        )
        .map_err(|e| format!("cannot open message store {}: {e}", dir.join("messages").display()))?;
        let store = Arc::new(Stores { defs, messages });
        let timers = Timers::start().map_err(|e| format!("cannot start the timer thread: {e}"))?;
        let alarms = Arc::new(alarms::Alarms::new(&config.alarms, &config.identity.cluster_name));
        // Measured once before the listeners open: a broker that starts
        // below a limit blocks publishers from the first publish.
        alarms.check(&dir);
        alarms::spawn_monitor(Arc::downgrade(&alarms), dir.clone());
        let b = Broker {
            vhosts: DashMap::new(),
            users: DashMap::new(),
            access: AccessControl::default(),
            registry: Default::default(),
            counters: Counters::default(),
            rates: Default::default(),
            next_conn_id: AtomicU64::new(1),
            config: Arc::new(config),
            store: store.clone(),
            timers: timers.clone(),
            started: std::time::Instant::now(),
            ports: std::sync::OnceLock::new(),
            amqps_port: std::sync::OnceLock::new(),
            alarms,
        };

        // Vhosts, users and permissions: the defaults are created (and
        // persisted) on first start: vhost "/", the default user as
        // administrator with ".*" everywhere on "/".
        let mut vhost_defs = loaded.vhosts.clone();
        if vhost_defs.is_empty() {
            let d = VHostDef { name: "/".into(), description: "Default virtual host".into(), tags: vec![] };
            store.defs.put_vhost(&d).map_err(|e| e.to_string())?;
            vhost_defs.push(d);
        }
        for d in vhost_defs {
            let v = VHost::new(&d.name, store.clone(), timers.clone());
            *v.meta.write() = vhost::VHostMeta { description: d.description, tags: d.tags };
            b.vhosts.insert(d.name.clone(), v);
        }
        if loaded.users.is_empty() {
            let p = PermissionDef {
                user: b.config.auth.default_user.clone(),
                vhost: "/".into(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            };
            store.defs.put_permission(&p).map_err(|e| e.to_string())?;
            b.access.set(Permission::new(p)?);
        }
        for p in loaded.permissions {
            b.access.set(Permission::new(p)?);
        }
        for t in loaded.topic_permissions {
            b.access.set_topic(t);
        }
        for (list, operator) in [(loaded.policies, false), (loaded.operator_policies, true)] {
            for p in list {
                let name = p.name.clone();
                match (b.vhost(&p.vhost), Policy::new(p, operator)) {
                    (Some(v), Ok(p)) => v.install_policy(p, operator),
                    (_, Err(e)) => tracing::warn!(policy = %name, error = %e, "stored policy skipped"),
                    (None, _) => {}
                }
            }
        }
        if loaded.users.is_empty() {
            let a = &b.config.auth;
            let u = User::new(&a.default_user, &a.default_pass, vec!["administrator".to_string()]);
            store
                .defs
                .put_user(&UserDef {
                    name: u.name.clone(),
                    password_hash: u.password_hash.clone(),
                    tags: u.tags.clone(),
                })
                .map_err(|e| e.to_string())?;
            b.users.insert(u.name.clone(), u);
        }
        for u in loaded.users {
            b.users
                .insert(u.name.clone(), User { name: u.name, password_hash: u.password_hash, tags: u.tags });
        }

        for x in &loaded.exchanges {
            if let Some(v) = b.vhost(&x.vhost) {
                v.restore_exchange(x);
            }
        }
        let mut by_id: HashMap<u64, Arc<Queue>> = HashMap::new();
        for q in &loaded.queues {
            if let Some(v) = b.vhost(&q.vhost) {
                by_id.insert(q.id, v.restore_queue(q));
            }
        }
        for bd in &loaded.bindings {
            if let Some(v) = b.vhost(&bd.vhost)
                && !v.restore_binding(bd)
            {
                tracing::warn!(source = %bd.source, destination = %bd.destination, "stored binding with a missing end skipped");
            }
        }
        let mut per_queue: HashMap<u64, Vec<Recovered>> = HashMap::new();
        let mut orphans = 0usize;
        let total = recovered.len();
        for r in recovered {
            if by_id.contains_key(&r.queue_id) {
                per_queue.entry(r.queue_id).or_default().push(r);
            } else {
                // Its queue was deleted before the crash: settle it now.
                store.messages.settle(r.loc);
                orphans += 1;
            }
        }
        for (id, msgs) in per_queue {
            if let Some(q) = by_id.get(&id) {
                q.recover(msgs);
            }
        }
        for q in by_id.values() {
            q.start_timers();
        }
        tracing::info!(
            exchanges = loaded.exchanges.len(),
            queues = loaded.queues.len(),
            bindings = loaded.bindings.len(),
            messages = total - orphans,
            "definitions and messages recovered"
        );
        Ok(Arc::new(b))
    }

    /// Writes and syncs everything pending (graceful shutdown).
    pub fn sync_store(&self) {
        self.store.messages.close();
    }

    /// A new, empty vhost (not yet registered or persisted).
    pub fn new_vhost(&self, name: &str) -> Arc<VHost> {
        VHost::new(name, self.store.clone(), self.timers.clone())
    }

    /// Deletes a vhost: its queues (and their messages), exchanges,
    /// bindings, policies and permissions, persisted first.
    pub fn delete_vhost(&self, v: &Arc<VHost>) -> Result<(), definitions::StoreError> {
        self.store.defs.delete_vhost(&v.name)?;
        self.vhosts.remove_if(&v.name, |_, x| Arc::ptr_eq(x, v));
        let queues: Vec<Arc<Queue>> = v.queues.iter().map(|q| q.clone()).collect();
        for q in queues {
            v.remove_queue(&q);
        }
        v.exchanges.clear();
        self.access.forget(None, Some(&v.name));
        for c in self.registry.all() {
            if c.vhost == v.name {
                c.force_close("vhost deleted");
            }
        }
        Ok(())
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Checks a login. `loopback` says whether the peer is on a loopback address.
    pub fn authenticate(&self, user: &str, password: &str, loopback: bool) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        if !loopback && self.config.auth.loopback_users.iter().any(|l| l == user) {
            return false;
        }
        u.check_password(password)
    }
}
