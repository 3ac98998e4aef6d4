//! Exchanges and their bindings: routing only, no I/O. The vhost walks
//! exchange-to-exchange bindings and alternate exchanges (it owns the names).

pub mod headers;
pub mod topic;

use crate::protocol::FieldTable;
use crate::queue::Queue;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// The delayed-message exchange type (LavinMQ built in; RabbitMQ by plugin).
pub const DELAYED_TYPE: &str = "x-delayed-message";
/// Internal queue holding a delayed exchange's waiting messages.
pub const DELAY_QUEUE_PREFIX: &str = "amq.delayed.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "direct" => Kind::Direct,
            "fanout" => Kind::Fanout,
            "topic" => Kind::Topic,
            "headers" => Kind::Headers,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Fanout => "fanout",
            Kind::Topic => "topic",
            Kind::Headers => "headers",
        }
    }
}

/// Where a binding leads. Exchanges are referenced by name so that bindings
/// never form `Arc` cycles.
#[derive(Debug, Clone)]
pub enum Destination {
    Queue(Arc<Queue>),
    Exchange(String),
}

impl Destination {
    pub fn same(&self, other: &Destination) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact,
    All,
    Topic(topic::Pattern),
    Headers(headers::XMatch),
}

#[derive(Debug, Default)]
struct Bindings {
    list: Vec<Binding>,
    /// Direct exchanges: routing key → indexes into `list`.
    by_key: HashMap<String, Vec<usize>>,
}

impl Bindings {
    fn reindex(&mut self) {
        self.by_key.clear();
        for (i, b) in self.list.iter().enumerate() {
            self.by_key.entry(b.routing_key.clone()).or_default().push(i);
        }
    }
}

#[derive(Debug)]
pub struct Exchange {
    pub name: String,
    pub vhost: String,
    pub kind: Kind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// The `alternate-exchange` argument (compared on redeclare).
    pub alternate_arg: Option<String>,
    /// The alternate exchange in effect: the argument, else a policy's.
    pub alternate: parking_lot::RwLock<Option<String>>,
    /// The policy that applies (management).
    pub policy: parking_lot::RwLock<Option<String>>,
    /// `x-delayed-message`: publishes with an `x-delay` header wait that long
    /// in the exchange's delay queue, then route by `kind` (`x-delayed-type`).
    pub delayed: bool,
    /// Messages published to this exchange / routed on by it (management).
    pub publish_in: std::sync::atomic::AtomicU64,
    pub publish_out: std::sync::atomic::AtomicU64,
    /// Sampled `publish_in`/`publish_out` rates (management).
    pub rates: crate::broker::rates::ExchangeRates,
    bindings: RwLock<Bindings>,
}

impl Exchange {
    pub fn new(
        name: String,
        vhost: String,
        kind: Kind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        let alternate = arguments.inner().get("alternate-exchange").and_then(crate::queue::args::as_str);
        Exchange {
            name,
            vhost,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            alternate: parking_lot::RwLock::new(alternate.clone()),
            alternate_arg: alternate,
            policy: Default::default(),
            delayed: false,
            publish_in: Default::default(),
            publish_out: Default::default(),
            rates: Default::default(),
            bindings: RwLock::default(),
        }
    }

    /// The declared type (`x-delayed-message` for a delayed exchange).
    pub fn type_name(&self) -> &'static str {
        if self.delayed { DELAYED_TYPE } else { self.kind.as_str() }
    }

    /// Where a delayed exchange keeps messages while they wait.
    pub fn delay_queue_name(&self) -> String {
        format!("{DELAY_QUEUE_PREFIX}{}", self.name)
    }

    /// Adds a binding; `Err` carries a bad `x-match` value. Duplicate = no-op.
    pub fn bind(
        &self,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), String> {
        let matcher = match self.kind {
            Kind::Direct => Matcher::Exact,
            Kind::Fanout => Matcher::All,
            Kind::Topic => Matcher::Topic(topic::Pattern::new(routing_key)),
            Kind::Headers => Matcher::Headers(headers::x_match(&arguments)?),
        };
        let mut b = self.bindings.write();
        if b.list.iter().any(|x| {
            x.destination.same(&destination) && x.routing_key == routing_key && x.arguments == arguments
        }) {
            return Ok(());
        }
        b.list.push(Binding { destination, routing_key: routing_key.to_string(), arguments, matcher });
        b.reindex();
        Ok(())
    }

    /// Removes a binding; missing is a no-op. Returns true if it existed.
    pub fn unbind(&self, destination: &Destination, routing_key: &str, arguments: &FieldTable) -> bool {
        let mut b = self.bindings.write();
        let before = b.list.len();
        b.list.retain(|x| {
            !(x.destination.same(destination) && x.routing_key == routing_key && &x.arguments == arguments)
        });
        let removed = b.list.len() != before;
        if removed {
            b.reindex();
        }
        removed
    }

    /// Removes every binding to `destination`. Returns how many went.
    pub fn unbind_all(&self, destination: &Destination) -> usize {
        let mut b = self.bindings.write();
        let before = b.list.len();
        b.list.retain(|x| !x.destination.same(destination));
        let n = before - b.list.len();
        if n > 0 {
            b.reindex();
        }
        n
    }

    pub fn binding_count(&self) -> usize {
        self.bindings.read().list.len()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().list.clone()
    }

    pub fn has_binding_to(&self, destination: &Destination) -> bool {
        self.bindings.read().list.iter().any(|b| b.destination.same(destination))
    }

    /// Appends the destinations matching a message to `out`.
    pub fn route(&self, routing_key: &[u8], headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        let b = self.bindings.read();
        match self.kind {
            Kind::Direct => {
                let Ok(key) = std::str::from_utf8(routing_key) else {
                    return;
                };
                if let Some(ix) = b.by_key.get(key) {
                    out.extend(ix.iter().map(|i| b.list[*i].destination.clone()));
                }
            }
            Kind::Fanout => out.extend(b.list.iter().map(|x| x.destination.clone())),
            Kind::Topic | Kind::Headers => {
                for x in &b.list {
                    let hit = match &x.matcher {
                        Matcher::Topic(p) => p.matches(routing_key),
                        Matcher::Headers(mode) => headers::matches(*mode, &x.arguments, headers),
                        Matcher::Exact => x.routing_key.as_bytes() == routing_key,
                        Matcher::All => true,
                    };
                    if hit {
                        out.push(x.destination.clone());
                    }
                }
            }
        }
    }
}
