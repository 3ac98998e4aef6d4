//! A virtual host: its exchanges, queues and bindings, with RabbitMQ's
//! declare / delete / bind rules and reply texts. Routing walks
//! exchange-to-exchange bindings and alternate exchanges with a seen-set and
//! returns each queue once.

use super::policy::{self, Policy, Target};
use super::timers::{Timers, VHostTimer};
use crate::error::{AmqpError, AmqpResult, code, rs};
use crate::exchange::{DELAY_QUEUE_PREFIX, DELAYED_TYPE, Destination, Exchange, Kind};
use crate::protocol::FieldTable;
use crate::queue::sink::Outbox;
use crate::queue::{Consumer, Queue, QueueSpec, Timer, args};
use crate::store::Stores;
use crate::store::definitions::PolicyDef;
use crate::store::definitions::{BindingDef, ExchangeDef, QueueDef, StoreError};
use dashmap::DashMap;
use parking_lot::RwLock;
use std::sync::Arc;

/// The predeclared exchanges of every vhost.
const SYSTEM_EXCHANGES: &[(&str, Kind, bool)] = &[
    ("", Kind::Direct, false),
    ("amq.direct", Kind::Direct, false),
    ("amq.fanout", Kind::Fanout, false),
    ("amq.topic", Kind::Topic, false),
    ("amq.headers", Kind::Headers, false),
    ("amq.match", Kind::Headers, false),
    ("amq.rabbitmq.trace", Kind::Topic, true),
];

pub struct QueueDeclare<'a> {
    /// The name to declare; a server-generated one when `server_named`.
    pub name: &'a str,
    pub server_named: bool,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    pub conn_id: u64,
}

/// Prefix of direct reply-to names (`amq.rabbitmq.reply-to.<token>`).
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";
pub const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// A direct reply-to consumer: replies go straight to its channel.
#[derive(Debug, Clone)]
pub struct ReplyTarget {
    pub outbox: Arc<Outbox>,
    pub channel: u16,
    pub consumer_tag: bytes::Bytes,
}

#[derive(Debug)]
pub struct VHost {
    pub name: String,
    pub exchanges: DashMap<String, Arc<Exchange>>,
    pub queues: DashMap<String, Arc<Queue>>,
    /// Direct reply-to consumers by token.
    pub reply_to: DashMap<String, ReplyTarget>,
    /// Where durable definitions and persistent messages go.
    pub store: Arc<Stores>,
    /// How this vhost's queues schedule themselves on the broker's timer thread.
    timer: Arc<dyn Timer>,
    /// Description and tags (management).
    pub meta: RwLock<VHostMeta>,
    policies: RwLock<Vec<Arc<Policy>>>,
    operator_policies: RwLock<Vec<Arc<Policy>>>,
    /// Queue churn (management's `churn_rates`): declared, created, deleted.
    pub churn: [std::sync::atomic::AtomicU64; 3],
    /// Message counters kept per vhost rather than per queue.
    pub msg: VHostCounters,
}

/// The vhost's share of counters that belong to no queue (management).
#[derive(Debug, Default)]
pub struct VHostCounters {
    /// Shared with the outboxes of this vhost's connections.
    pub confirm: Arc<std::sync::atomic::AtomicU64>,
    pub return_unroutable: std::sync::atomic::AtomicU64,
    pub drop_unroutable: std::sync::atomic::AtomicU64,
    pub get_empty: std::sync::atomic::AtomicU64,
    pub rates: super::rates::RateCell<4>,
}

impl VHostCounters {
    /// In `rates::VHOST_RATES` order.
    pub fn values(&self) -> [u64; 4] {
        use std::sync::atomic::Ordering::Relaxed;
        [
            self.confirm.load(Relaxed),
            self.return_unroutable.load(Relaxed),
            self.drop_unroutable.load(Relaxed),
            self.get_empty.load(Relaxed),
        ]
    }
}

#[derive(Debug, Clone, Default)]
pub struct VHostMeta {
    pub description: String,
    pub tags: Vec<String>,
}

/// A random server-generated name: prefix + 22 chars of base64url (16 bytes).
pub fn generated_name(prefix: &str) -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

impl VHost {
    pub fn new(name: &str, store: Arc<Stores>, timers: Arc<Timers>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self::build(name, store, Arc::new(VHostTimer { timers, vhost: me.clone() })))
    }

    fn build(name: &str, store: Arc<Stores>, timer: Arc<dyn Timer>) -> Self {
        let v = VHost {
            name: name.to_string(),
            exchanges: DashMap::new(),
            queues: DashMap::new(),
            reply_to: DashMap::new(),
            store,
            timer,
            meta: Default::default(),
            policies: Default::default(),
            operator_policies: Default::default(),
            churn: Default::default(),
            msg: Default::default(),
        };
        for (x, kind, internal) in SYSTEM_EXCHANGES {
            let ex = Exchange::new(
                x.to_string(),
                name.to_string(),
                *kind,
                true,
                false,
                *internal,
                FieldTable::default(),
            );
            v.exchanges.insert(x.to_string(), Arc::new(ex));
        }
        v
    }

    /// A failed definitions write: RabbitMQ's internal error, which closes
    /// the connection (the client cannot know what was kept).
    fn persist(&self, r: Result<(), StoreError>) -> AmqpResult<()> {
        r.map_err(|e| {
            tracing::error!(error = %e, "cannot persist a definition");
            AmqpError::new(code::INTERNAL_ERROR, format!("cannot persist definition: {e}"))
        })
    }

    fn exchange_def(x: &Exchange) -> ExchangeDef {
        ExchangeDef {
            vhost: x.vhost.clone(),
            name: x.name.clone(),
            kind: x.type_name().to_string(),
            durable: x.durable,
            auto_delete: x.auto_delete,
            internal: x.internal,
            arguments: x.arguments.clone(),
        }
    }

    /// The binding's definition if both ends survive a restart.
    fn durable_binding(
        &self,
        source: &Exchange,
        dest: &Destination,
        key: &str,
        arguments: &FieldTable,
    ) -> Option<BindingDef> {
        if !source.durable {
            return None;
        }
        let (destination, destination_type) = match dest {
            Destination::Queue(q) if q.persisted => (q.name.clone(), "queue"),
            Destination::Exchange(x) if self.exchanges.get(x).is_some_and(|e| e.durable) => {
                (x.clone(), "exchange")
            }
            _ => return None,
        };
        Some(BindingDef {
            vhost: self.name.clone(),
            source: source.name.clone(),
            destination,
            destination_type: destination_type.to_string(),
            routing_key: key.to_string(),
            arguments: arguments.clone(),
        })
    }

    fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no {}", rs("exchange", name, &self.name)))
    }

    fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no {}", rs("queue", name, &self.name)))
    }

    pub fn exchange(&self, name: &str) -> AmqpResult<Arc<Exchange>> {
        self.exchanges.get(name).map(|e| e.clone()).ok_or_else(|| self.no_exchange(name))
    }

    pub fn queue(&self, name: &str) -> AmqpResult<Arc<Queue>> {
        self.queues.get(name).map(|q| q.clone()).ok_or_else(|| self.no_queue(name))
    }

    /// 405 unless `conn_id` may use the queue (RabbitMQ's exclusive check).
    pub fn check_exclusive(&self, q: &Queue, conn_id: u64) -> AmqpResult<()> {
        match q.exclusive_owner {
            Some(owner) if owner != conn_id => Err(AmqpError::locked(format!(
                "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                q.resource()
            ))),
            _ => Ok(()),
        }
    }

    /// A queue the connection may use, or 404 / 405.
    pub fn usable_queue(&self, name: &str, conn_id: u64) -> AmqpResult<Arc<Queue>> {
        let q = self.queue(name)?;
        self.check_exclusive(&q, conn_id)?;
        Ok(q)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: &str,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        if passive {
            if name.is_empty() {
                return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
            }
            return self.exchange(name).map(|_| ());
        }
        // RabbitMQ (3.13.3 and later) checks the type first, with a 406.
        let (kind_v, delayed) = exchange_kind(kind, &arguments)?;
        if name.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        if let Some(x) = self.exchanges.get(name) {
            let ineq = |what: &str, received: &str, current: &str| {
                Err(AmqpError::precondition(format!(
                    "inequivalent arg '{what}' for {}: received '{received}' but current is '{current}'",
                    rs("exchange", name, &self.name)
                )))
            };
            if x.kind != kind_v || x.delayed != delayed {
                return ineq("type", kind, x.type_name());
            }
            if x.durable != durable {
                return ineq("durable", bool_str(durable), bool_str(x.durable));
            }
            if x.auto_delete != auto_delete {
                return ineq("auto_delete", bool_str(auto_delete), bool_str(x.auto_delete));
            }
            if x.internal != internal {
                return ineq("internal", bool_str(internal), bool_str(x.internal));
            }
            let ae = arguments.inner().get("alternate-exchange").and_then(args::as_str);
            if ae != x.alternate_arg {
                // RabbitMQ's `rabbit_misc:assert_args_equivalence1/4`: the
                // bare values when both are set, typed ones against `none`.
                let (received, current) = match (&ae, &x.alternate_arg) {
                    (Some(r), Some(c)) => (format!("'{r}'"), format!("'{c}'")),
                    _ => {
                        let show = |v: &Option<String>| match v {
                            Some(s) => format!("the value '{s}' of type 'longstr'"),
                            None => "none".to_string(),
                        };
                        (show(&ae), show(&x.alternate_arg))
                    }
                };
                return Err(AmqpError::precondition(format!(
                    "inequivalent arg 'alternate-exchange' for {}: received {received} but current is {current}",
                    rs("exchange", name, &self.name),
                )));
            }
            return Ok(());
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let mut x = Exchange::new(
            name.to_string(),
            self.name.clone(),
            kind_v,
            durable,
            auto_delete,
            internal,
            arguments,
        );
        x.delayed = delayed;
        self.apply_exchange_policy(&x);
        if durable {
            self.persist(self.store.defs.put_exchange(&Self::exchange_def(&x)))?;
        }
        if delayed {
            self.create_delay_queue(&x)?;
        }
        self.exchanges.entry(name.to_string()).or_insert_with(|| Arc::new(x));
        Ok(())
    }

    /// The log id for a new queue: a persistent id stored with its definition
    /// when the queue is persisted, a runtime id otherwise.
    fn queue_store_id(
        &self,
        name: &str,
        persisted: bool,
        auto_delete: bool,
        arguments: &FieldTable,
    ) -> AmqpResult<u64> {
        if !persisted {
            return Ok(self.store.messages.transient_id());
        }
        let id =
            self.store.defs.next_id().map_err(|e| {
                AmqpError::new(code::INTERNAL_ERROR, format!("cannot persist definition: {e}"))
            })?;
        let def = QueueDef {
            vhost: self.name.clone(),
            name: name.to_string(),
            id,
            auto_delete,
            arguments: arguments.clone(),
        };
        self.persist(self.store.defs.put_queue(&def))?;
        Ok(id)
    }

    /// A delayed exchange's waiting room: an internal queue (durable with a
    /// durable exchange, so persistent delayed messages survive restarts)
    /// whose messages, when their `x-delay` runs out, are routed by the
    /// exchange instead of being dead-lettered.
    fn create_delay_queue(&self, x: &Exchange) -> AmqpResult<()> {
        let name = x.delay_queue_name();
        if self.queues.contains_key(&name) {
            return Ok(());
        }
        let persisted = x.durable;
        let store_id = self.queue_store_id(&name, persisted, false, &FieldTable::default())?;
        let q = Arc::new(Queue::new(QueueSpec {
            name: name.clone(),
            vhost: self.name.clone(),
            durable: x.durable,
            auto_delete: false,
            exclusive_owner: None,
            arguments: FieldTable::default(),
            args: Default::default(),
            store: self.store.messages.clone(),
            store_id,
            persisted,
            timer: Some(self.timer.clone()),
            delay_for: Some(x.name.clone()),
        }));
        self.queues.insert(name, q);
        Ok(())
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> AmqpResult<()> {
        if name.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        if name.starts_with("amq.") && self.exchanges.contains_key(name) {
            return Err(AmqpError::access_refused(format!(
                "deletion of system {} not allowed",
                rs("exchange", name, &self.name)
            )));
        }
        let Some(x) = self.exchanges.get(name).map(|x| x.clone()) else {
            return Ok(()); // deleting a missing exchange is not an error in 3.x
        };
        if if_unused && x.binding_count() > 0 {
            return Err(AmqpError::precondition(format!("{} in use", rs("exchange", name, &self.name))));
        }
        self.exchanges.remove(name);
        x.mark_deleted();
        self.drop_bindings_to(&Destination::Exchange(name.to_string()));
        if x.delayed
            && let Some(q) = self.queues.get(&x.delay_queue_name()).map(|q| q.clone())
        {
            self.remove_queue(&q);
        }
        if x.durable {
            self.persist(self.store.defs.delete_exchange(&self.name, name))?;
            self.persist(self.store.defs.delete_bindings_of(&self.name, "exchange", name))?;
        }
        Ok(())
    }

    /// Removes every binding to `dest`, then auto-deletes exchanges left with none.
    fn drop_bindings_to(&self, dest: &Destination) {
        let mut emptied = Vec::new();
        for x in self.exchanges.iter() {
            if x.unbind_all(dest) > 0 && x.auto_delete && x.binding_count() == 0 {
                emptied.push(x.name.clone());
            }
        }
        for name in emptied {
            let _ = self.delete_exchange(&name, true);
        }
    }

    pub fn declare_queue(&self, d: QueueDeclare<'_>) -> AmqpResult<(Arc<Queue>, bool)> {
        if d.passive {
            return Ok((self.usable_queue(d.name, d.conn_id)?, false));
        }
        let name = if d.name.is_empty() { generated_name("amq.gen-") } else { d.name.to_string() };
        self.churn[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let server_named = d.server_named || d.name.is_empty();
        if let Some(q) = self.queues.get(&name).map(|q| q.clone()) {
            self.check_exclusive(&q, d.conn_id)?;
            if q.exclusive_owner.is_some() != d.exclusive {
                return Err(AmqpError::locked(format!(
                    "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                    q.resource()
                )));
            }
            let ineq = |what: &str, received: bool, current: bool| {
                Err(AmqpError::precondition(format!(
                    "inequivalent arg '{what}' for {}: received '{}' but current is '{}'",
                    q.resource(),
                    bool_str(received),
                    bool_str(current)
                )))
            };
            if q.durable != d.durable {
                return ineq("durable", d.durable, q.durable);
            }
            if q.auto_delete != d.auto_delete {
                return ineq("auto_delete", d.auto_delete, q.auto_delete);
            }
            args::check_equivalent(&q.arguments, &d.arguments, &name, &self.name)?;
            q.touch();
            return Ok((q, false));
        }
        if name.starts_with("amq.") && !server_named {
            return Err(AmqpError::access_refused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let parsed = args::parse(&d.arguments, &name, &self.name)?;
        args::check_classic_keys(&d.arguments, &name, &self.name)?;
        let owner = d.exclusive.then_some(d.conn_id);
        // Exclusive and auto-delete queues never outlive a restart.
        let persisted = d.durable && !d.exclusive && !d.auto_delete;
        let store_id = self.queue_store_id(&name, persisted, d.auto_delete, &d.arguments)?;
        let q = Arc::new(Queue::new(QueueSpec {
            name: name.clone(),
            vhost: self.name.clone(),
            durable: d.durable,
            auto_delete: d.auto_delete,
            exclusive_owner: owner,
            arguments: d.arguments,
            args: parsed,
            store: self.store.messages.clone(),
            store_id,
            persisted,
            timer: Some(self.timer.clone()),
            delay_for: None,
        }));
        self.apply_queue_policy(&q);
        let q = self.queues.entry(name).or_insert(q).clone();
        q.start_timers();
        self.churn[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((q, true))
    }

    /// Deletes a queue; returns the ready messages dropped. Consumers are
    /// told with `basic.cancel` where their client asked for it.
    pub fn delete_queue(&self, name: &str, if_unused: bool, if_empty: bool, conn_id: u64) -> AmqpResult<u32> {
        self.delete_queue_from(name, if_unused, if_empty, conn_id, None).map(|(n, _)| n)
    }

    /// `delete_queue` for a `queue.delete` on channel `from`: the consumers
    /// on that very channel are not told yet but returned, so that the
    /// channel can send `queue.delete-ok` first and their `basic.cancel`
    /// after it, in RabbitMQ's order (its channel answers the delete, and
    /// learns of the queue's end only afterwards). py-amqp raises
    /// `ConsumerCancelled` out of `queue_delete()` if the cancel comes first.
    pub fn delete_queue_from(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn_id: u64,
        from: Option<(&Arc<Outbox>, u16)>,
    ) -> AmqpResult<(u32, Vec<Consumer>)> {
        let Some(q) = self.queues.get(name).map(|q| q.clone()) else {
            return Ok((0, Vec::new()));
        };
        self.check_exclusive(&q, conn_id)?;
        if if_unused && q.consumer_count() > 0 {
            return Err(AmqpError::precondition(format!("{} in use", q.resource())));
        }
        if if_empty && q.message_count() > 0 {
            return Err(AmqpError::precondition(format!("{} not empty", q.resource())));
        }
        let held = |c: &Consumer| from.is_some_and(|(o, ch)| Arc::ptr_eq(&c.outbox, o) && c.channel == ch);
        Ok(self.remove_queue_holding(&q, held))
    }

    /// Unconditional removal (also used for exclusive and auto-delete queues).
    pub fn remove_queue(&self, q: &Arc<Queue>) -> u32 {
        self.remove_queue_holding(q, |_| false).0
    }

    /// Removes `q`; consumers for which `held` is true are returned instead
    /// of being sent `basic.cancel` (the caller sends it with `notify_cancel`).
    fn remove_queue_holding(&self, q: &Arc<Queue>, held: impl Fn(&Consumer) -> bool) -> (u32, Vec<Consumer>) {
        if self.queues.remove_if(&q.name, |_, v| Arc::ptr_eq(v, q)).is_some() {
            self.churn[2].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if q.persisted {
            let r = self
                .store
                .defs
                .delete_queue(&self.name, &q.name)
                .and_then(|_| self.store.defs.delete_bindings_of(&self.name, "queue", &q.name));
            if let Err(e) = r {
                tracing::error!(error = %e, queue = %q.name, "cannot remove queue definition");
            }
        }
        self.drop_bindings_to(&Destination::Queue(q.clone()));
        let (consumers, n) = q.mark_deleted();
        let mut kept = Vec::new();
        for c in consumers {
            if held(&c) {
                kept.push(c);
            } else {
                notify_cancel(&c);
            }
        }
        (n, kept)
    }

    /// Recreates a persisted exchange at startup (no checks, no writes).
    pub fn restore_exchange(&self, d: &ExchangeDef) {
        let delayed = d.kind == DELAYED_TYPE;
        let routing_kind = if delayed {
            d.arguments.inner().get("x-delayed-type").and_then(args::as_str).unwrap_or_default()
        } else {
            d.kind.clone()
        };
        let Some(kind) = Kind::parse(&routing_kind) else {
            tracing::warn!(exchange = %d.name, kind = %d.kind, "stored exchange of unknown type skipped");
            return;
        };
        let mut x = Exchange::new(
            d.name.clone(),
            self.name.clone(),
            kind,
            d.durable,
            d.auto_delete,
            d.internal,
            d.arguments.clone(),
        );
        x.delayed = delayed;
        self.apply_exchange_policy(&x);
        self.exchanges.insert(d.name.clone(), Arc::new(x));
    }

    /// Recreates a persisted queue at startup.
    pub fn restore_queue(&self, d: &QueueDef) -> Arc<Queue> {
        let parsed = args::parse(&d.arguments, &d.name, &self.name).unwrap_or_default();
        let q = Arc::new(Queue::new(QueueSpec {
            name: d.name.clone(),
            vhost: self.name.clone(),
            durable: true,
            auto_delete: d.auto_delete,
            exclusive_owner: None,
            arguments: d.arguments.clone(),
            args: parsed,
            store: self.store.messages.clone(),
            store_id: d.id,
            persisted: true,
            timer: Some(self.timer.clone()),
            delay_for: d.name.strip_prefix(DELAY_QUEUE_PREFIX).map(str::to_string),
        }));
        self.apply_queue_policy(&q);
        self.queues.insert(d.name.clone(), q.clone());
        q
    }

    /// Sets (creates or replaces) a policy, persists it and applies it to
    /// every queue and exchange of the vhost at once.
    pub fn put_policy(&self, p: Policy, operator: bool) -> Result<(), StoreError> {
        self.store.defs.put_policy(&p.def, operator)?;
        self.install_policy(p, operator);
        self.apply_policies();
        Ok(())
    }

    /// Installs a policy without persisting or applying it (startup).
    pub fn install_policy(&self, p: Policy, operator: bool) {
        let list = if operator { &self.operator_policies } else { &self.policies };
        let mut l = list.write();
        l.retain(|x| x.def.name != p.def.name);
        l.push(Arc::new(p));
        l.sort_by(|a, b| a.def.name.cmp(&b.def.name));
    }

    /// Removes a policy; false if there was none by that name.
    pub fn delete_policy(&self, name: &str, operator: bool) -> Result<bool, StoreError> {
        let list = if operator { &self.operator_policies } else { &self.policies };
        if !list.read().iter().any(|p| p.def.name == name) {
            return Ok(false);
        }
        self.store.defs.delete_policy(&self.name, name, operator)?;
        list.write().retain(|p| p.def.name != name);
        self.apply_policies();
        Ok(true)
    }

    pub fn policy_defs(&self, operator: bool) -> Vec<PolicyDef> {
        let list = if operator { &self.operator_policies } else { &self.policies };
        list.read().iter().map(|p| p.def.clone()).collect()
    }

    /// Re-evaluates which policies apply to every queue and exchange.
    pub fn apply_policies(&self) {
        let queues: Vec<Arc<Queue>> = self.queues.iter().map(|q| q.clone()).collect();
        for q in queues {
            self.apply_queue_policy(&q);
        }
        let exchanges: Vec<Arc<Exchange>> = self.exchanges.iter().map(|x| x.clone()).collect();
        for x in exchanges {
            self.apply_exchange_policy(&x);
        }
    }

    fn apply_queue_policy(&self, q: &Arc<Queue>) {
        if q.delay_for.is_some() {
            return;
        }
        let p = policy::select(&self.policies.read(), Target::Queue, &q.name);
        let op = policy::select(&self.operator_policies.read(), Target::Queue, &q.name);
        let (args, applied) = policy::effective_queue_args(&q.declared, p.as_deref(), op.as_deref());
        q.set_policy(args, applied);
    }

    fn apply_exchange_policy(&self, x: &Exchange) {
        if x.name.is_empty() {
            return;
        }
        let p = policy::select(&self.policies.read(), Target::Exchange, &x.name);
        *x.alternate.write() = policy::effective_alternate_exchange(x.alternate_arg.clone(), p.as_deref());
        *x.policy.write() = p.map(|p| p.def.name.clone());
    }

    /// Recreates a persisted binding at startup; false if an end is missing.
    pub fn restore_binding(&self, d: &BindingDef) -> bool {
        let Ok(src) = self.exchange(&d.source) else {
            return false;
        };
        let dest = match d.destination_type.as_str() {
            "queue" => match self.queue(&d.destination) {
                Ok(q) => Destination::Queue(q),
                Err(_) => return false,
            },
            _ if self.exchanges.contains_key(&d.destination) => Destination::Exchange(d.destination.clone()),
            _ => return false,
        };
        src.bind(dest, &d.routing_key, d.arguments.clone()).is_ok()
    }

    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        arguments: FieldTable,
        conn_id: u64,
    ) -> AmqpResult<()> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        let x = self.exchange(exchange)?;
        let q = self.usable_queue(queue, conn_id)?;
        self.bind(&x, Destination::Queue(q), key, arguments)
    }

    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        arguments: &FieldTable,
        conn_id: u64,
    ) -> AmqpResult<()> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        // RabbitMQ 3.x: unbinding from or to a missing object is not an error.
        let (Ok(x), Ok(q)) = (self.exchange(exchange), self.queue(queue)) else {
            return Ok(());
        };
        if let Err(locked) = self.check_exclusive(&q, conn_id) {
            // RabbitMQ looks for the binding first: removing one that is not
            // there succeeds even on another connection's exclusive queue.
            let dest = Destination::Queue(q.clone());
            let exists = x
                .bindings()
                .iter()
                .any(|b| b.destination.same(&dest) && b.routing_key == key && &b.arguments == arguments);
            return if exists { Err(locked) } else { Ok(()) };
        }
        self.unbind(&x, Destination::Queue(q), key, arguments)
    }

    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        if destination.is_empty() || source.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        let src = self.exchange(source)?;
        self.exchange(destination)?;
        self.bind(&src, Destination::Exchange(destination.to_string()), key, arguments)
    }

    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        arguments: &FieldTable,
    ) -> AmqpResult<()> {
        if destination.is_empty() || source.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        let (Ok(src), Ok(_)) = (self.exchange(source), self.exchange(destination)) else {
            return Ok(());
        };
        self.unbind(&src, Destination::Exchange(destination.to_string()), key, arguments)
    }

    /// Adds a binding, persisting it when both ends are durable.
    fn bind(&self, src: &Exchange, dest: Destination, key: &str, arguments: FieldTable) -> AmqpResult<()> {
        if let Some(def) = self.durable_binding(src, &dest, key, &arguments) {
            headers_check(src, &arguments)?;
            self.persist(self.store.defs.put_binding(&def))?;
        }
        src.bind(dest, key, arguments).map_err(bad_x_match)
    }

    /// Removes a binding (missing is fine); an auto-delete source exchange
    /// goes with its last binding.
    fn unbind(&self, src: &Exchange, dest: Destination, key: &str, arguments: &FieldTable) -> AmqpResult<()> {
        if let Some(def) = self.durable_binding(src, &dest, key, arguments) {
            self.persist(self.store.defs.delete_binding(&def))?;
        }
        if src.unbind(&dest, key, arguments) && src.auto_delete && src.binding_count() == 0 {
            let _ = self.delete_exchange(&src.name, true);
        }
        Ok(())
    }

    /// Queues a message published to `x` reaches through `keys` (the routing
    /// key plus CC/BCC), each once, following exchange-to-exchange bindings
    /// and, when nothing matched, the alternate-exchange chain.
    pub fn route(
        &self,
        x: &Arc<Exchange>,
        keys: &[&[u8]],
        headers: Option<&FieldTable>,
        out: &mut Vec<Arc<Queue>>,
    ) {
        // Exchanges visited so far (bindings between exchanges may form
        // cycles). Nothing is allocated unless exchanges are bound to
        // exchanges or an alternate exchange is tried.
        let mut seen: Vec<Arc<Exchange>> = Vec::new();
        let mut start = Some(x.clone());
        while let Some(x) = start.take() {
            self.route_graph(x.clone(), keys, headers, &mut seen, out);
            if !out.is_empty() {
                return;
            }
            let ae = x.alternate.read().clone();
            if let Some(ae) = ae
                && !seen.iter().any(|s| s.name == ae)
                && let Some(next) = self.exchanges.get(ae.as_str()).map(|e| e.clone())
            {
                start = Some(next);
            }
        }
    }

    /// Routes through `x` and every exchange bound below it.
    fn route_graph(
        &self,
        x: Arc<Exchange>,
        keys: &[&[u8]],
        headers: Option<&FieldTable>,
        seen: &mut Vec<Arc<Exchange>>,
        out: &mut Vec<Arc<Queue>>,
    ) {
        let root = x.clone();
        let mut work: Vec<Arc<Exchange>> = Vec::new();
        let mut bound: Vec<String> = Vec::new();
        let mut current = x;
        loop {
            if current.name.is_empty() {
                for k in keys {
                    if let Some(q) = std::str::from_utf8(k).ok().and_then(|k| self.queues.get(k)) {
                        push_unique(out, &q);
                    }
                }
            } else {
                for k in keys {
                    current.route(k, headers, |d| match d {
                        Destination::Queue(q) => push_unique(out, q),
                        Destination::Exchange(name) => bound.push(name.clone()),
                    });
                }
            }
            for name in bound.drain(..) {
                if name != root.name
                    && !seen.iter().any(|s| s.name == name)
                    && let Some(next) = self.exchanges.get(&name).map(|e| e.clone())
                {
                    seen.push(next.clone());
                    work.push(next);
                }
            }
            match work.pop() {
                Some(next) => current = next,
                None => break,
            }
        }
        seen.push(root);
    }
}

fn push_unique(out: &mut Vec<Arc<Queue>>, q: &Arc<Queue>) {
    if !out.iter().any(|x| Arc::ptr_eq(x, q)) {
        out.push(q.clone());
    }
}

/// Validates a headers binding's `x-match` before it is persisted.
fn headers_check(x: &Exchange, arguments: &FieldTable) -> AmqpResult<()> {
    if x.kind == Kind::Headers {
        crate::exchange::headers::x_match(arguments).map_err(bad_x_match)?;
    }
    Ok(())
}

fn bad_x_match(why: String) -> AmqpError {
    AmqpError::precondition(why)
}

/// Removes a consumer from its channel's bookkeeping and, if the client
/// announced `consumer_cancel_notify`, sends it `basic.cancel`.
pub fn notify_cancel(c: &Consumer) {
    cancel_in_outbox(&c.outbox, c.channel, &c.tag);
}

fn cancel_in_outbox(outbox: &Outbox, channel: u16, tag: &bytes::Bytes) {
    use crate::protocol::{AMQPClass, short};
    use amq_protocol::protocol::basic;
    outbox.with(|st| {
        let Some(ch) = st.channels.get_mut(channel) else {
            return;
        };
        if ch.consumers.remove(tag).is_none() || !st.cancel_notify || st.shutdown {
            return;
        }
        let m = AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: short(&String::from_utf8_lossy(tag)),
            nowait: true,
        }));
        crate::protocol::frame::encode_method(&mut st.buf, channel, &m);
    });
}

/// The routing kind an `exchange.declare` asks for, and whether it is the
/// delayed-message type. An unknown type is a channel error 406, as in
/// RabbitMQ 3.13.3 and later (before, it closed the connection with 503).
pub fn exchange_kind(kind: &str, arguments: &FieldTable) -> AmqpResult<(Kind, bool)> {
    let delayed = kind == DELAYED_TYPE;
    let routing_kind = if delayed {
        arguments.inner().get("x-delayed-type").and_then(args::as_str).unwrap_or_default()
    } else {
        kind.to_string()
    };
    match Kind::parse(&routing_kind) {
        Some(k) => Ok((k, delayed)),
        None if delayed => Err(AmqpError::precondition(
            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
        )),
        None => Err(AmqpError::precondition(format!("unknown exchange type '{kind}'"))),
    }
}
