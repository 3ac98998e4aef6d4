//! Exchanges and their bindings: routing only, no I/O. The vhost walks
//! exchange-to-exchange bindings and alternate exchanges (it owns the names).

mod bindings;
pub mod headers;
pub mod topic;

use bindings::Bindings;

use crate::protocol::FieldTable;
use crate::queue::Queue;
use parking_lot::RwLock;
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

    /// A hashable identity: the queue's address (the binding holds an
    /// `Arc`, so the address is not reused while it is bound) or the
    /// exchange's name.
    fn key(&self) -> DestinationKey {
        match self {
            Destination::Queue(q) => DestinationKey::Queue(Arc::as_ptr(q) as usize),
            Destination::Exchange(x) => DestinationKey::Exchange(x.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DestinationKey {
    Queue(usize),
    Exchange(String),
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
    matcher: Matcher,
    /// Creation order: listings show bindings in the order they were made.
    seq: u64,
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact,
    All,
    Topic(topic::Pattern),
    Headers(headers::XMatch),
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
    /// Set when the exchange is deleted, for connections that remembered it
    /// (their route cache) and must look the name up again.
    deleted: std::sync::atomic::AtomicBool,
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
            deleted: Default::default(),
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn mark_deleted(&self) {
        self.deleted.store(true, std::sync::atomic::Ordering::Release);
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
        let binding =
            Binding { destination, routing_key: routing_key.to_string(), arguments, matcher, seq: 0 };
        self.bindings.write().add(binding);
        Ok(())
    }

    /// Removes a binding; missing is a no-op. Returns true if it existed.
    pub fn unbind(&self, destination: &Destination, routing_key: &str, arguments: &FieldTable) -> bool {
        self.bindings.write().remove(destination, routing_key, arguments)
    }

    /// Removes every binding to `destination`. Returns how many went.
    pub fn unbind_all(&self, destination: &Destination) -> usize {
        self.bindings.write().remove_destination(destination)
    }

    pub fn binding_count(&self) -> usize {
        self.bindings.read().len
    }

    /// Every binding, in the order they were made.
    pub fn bindings(&self) -> Vec<Binding> {
        let mut all: Vec<Binding> = self.bindings.read().all().cloned().collect();
        all.sort_unstable_by_key(|b| b.seq);
        all
    }

    pub fn has_binding_to(&self, destination: &Destination) -> bool {
        self.bindings.read().by_destination.contains_key(&destination.key())
    }

    /// Appends the destinations matching a message to `out`.
    /// Calls `visit` with every destination a message with `routing_key`
    /// and `headers` reaches (under the bindings' read lock: `visit` must
    /// not take other locks). No allocation: routing runs once per publish.
    pub fn route(
        &self,
        routing_key: &[u8],
        headers: Option<&FieldTable>,
        mut visit: impl FnMut(&Destination),
    ) {
        let b = self.bindings.read();
        match self.kind {
            Kind::Direct => {
                let Ok(key) = std::str::from_utf8(routing_key) else {
                    return;
                };
                if let Some(k) = b.by_key.get(key) {
                    k.list.iter().for_each(|x| visit(&x.destination));
                }
            }
            Kind::Fanout => b.all().for_each(|x| visit(&x.destination)),
            Kind::Topic | Kind::Headers => {
                for x in b.all() {
                    let hit = match &x.matcher {
                        Matcher::Topic(p) => p.matches(routing_key),
                        Matcher::Headers(mode) => headers::matches(*mode, &x.arguments, headers),
                        Matcher::Exact => x.routing_key.as_bytes() == routing_key,
                        Matcher::All => true,
                    };
                    if hit {
                        visit(&x.destination);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(kind: Kind) -> Exchange {
        Exchange::new("x".into(), "/".into(), kind, false, false, false, FieldTable::default())
    }

    fn to(name: &str) -> Destination {
        Destination::Exchange(name.into())
    }

    fn routed(x: &Exchange, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        x.route(key.as_bytes(), None, |d| out.push(d.clone()));
        let mut names: Vec<String> = out
            .into_iter()
            .map(|d| match d {
                Destination::Exchange(n) => n,
                Destination::Queue(q) => q.name.clone(),
            })
            .collect();
        names.sort();
        names
    }

    fn args(k: &str) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert(k.into(), crate::protocol::AMQPValue::Boolean(true));
        t
    }

    #[test]
    fn the_binding_index_follows_bind_unbind_and_unbind_all() {
        let x = x(Kind::Direct);
        x.bind(to("a"), "k1", FieldTable::default()).unwrap();
        x.bind(to("a"), "k1", FieldTable::default()).unwrap(); // duplicate: no-op
        x.bind(to("a"), "k1", args("other")).unwrap(); // other arguments: a second binding
        x.bind(to("a"), "k2", FieldTable::default()).unwrap();
        x.bind(to("b"), "k1", FieldTable::default()).unwrap();
        assert_eq!(x.binding_count(), 4);
        assert_eq!(routed(&x, "k1"), ["a", "a", "b"]);
        assert_eq!(routed(&x, "k2"), ["a"]);
        assert!(routed(&x, "k3").is_empty());
        let order: Vec<_> =
            x.bindings().iter().map(|b| (b.routing_key.clone(), b.arguments.clone())).collect();
        assert_eq!(
            order,
            [
                ("k1".to_string(), FieldTable::default()),
                ("k1".to_string(), args("other")),
                ("k2".to_string(), FieldTable::default()),
                ("k1".to_string(), FieldTable::default()),
            ],
            "listed in the order they were made"
        );

        assert!(!x.unbind(&to("a"), "k1", &args("missing")));
        assert!(x.unbind(&to("a"), "k1", &args("other")));
        assert!(!x.unbind(&to("a"), "k1", &args("other")));
        assert_eq!(x.binding_count(), 3);
        assert_eq!(routed(&x, "k1"), ["a", "b"]);

        assert_eq!(x.unbind_all(&to("a")), 2);
        assert_eq!(x.unbind_all(&to("a")), 0);
        assert!(!x.has_binding_to(&to("a")) && x.has_binding_to(&to("b")));
        assert_eq!(x.binding_count(), 1);
        assert_eq!(routed(&x, "k1"), ["b"]);
        assert!(routed(&x, "k2").is_empty());
        assert!(x.unbind(&to("b"), "k1", &FieldTable::default()));
        assert!(!x.has_binding_to(&to("b")));
        assert_eq!(x.binding_count(), 0);
    }

    #[test]
    fn many_bindings_under_one_key_stay_indexed_through_removals() {
        // Past the scan limit the key's bindings are found through a
        // position index that removals (which swap the last one in) must
        // keep true.
        let f = x(Kind::Fanout);
        let names: Vec<String> = (0..60).map(|i| format!("d{i:02}")).collect();
        for n in &names {
            f.bind(to(n), "", FieldTable::default()).unwrap();
        }
        f.bind(to("d07"), "", args("second")).unwrap();
        f.bind(to("d07"), "", FieldTable::default()).unwrap(); // duplicate: no-op
        assert_eq!(f.binding_count(), 61);
        let mut expected = names.clone();
        expected.push("d07".into());
        expected.sort();
        assert_eq!(routed(&f, ""), expected);
        for gone in ["d00", "d59", "d30", "d31"] {
            assert!(f.unbind(&to(gone), "", &FieldTable::default()));
            assert!(!f.unbind(&to(gone), "", &FieldTable::default()));
            expected.retain(|n| n != gone);
        }
        assert_eq!(f.unbind_all(&to("d07")), 2);
        expected.retain(|n| n != "d07");
        assert_eq!(routed(&f, ""), expected);
        for n in &expected {
            assert!(f.has_binding_to(&to(n)), "{n}");
            assert!(f.unbind(&to(n), "", &FieldTable::default()), "{n}");
        }
        assert_eq!(f.binding_count(), 0);
        assert!(routed(&f, "").is_empty());
    }

    #[test]
    fn fanout_and_topic_route_over_every_key() {
        let f = x(Kind::Fanout);
        f.bind(to("a"), "one", FieldTable::default()).unwrap();
        f.bind(to("b"), "two", FieldTable::default()).unwrap();
        assert_eq!(routed(&f, "anything"), ["a", "b"]);
        let t = x(Kind::Topic);
        t.bind(to("a"), "logs.*", FieldTable::default()).unwrap();
        t.bind(to("b"), "#", FieldTable::default()).unwrap();
        t.bind(to("c"), "other", FieldTable::default()).unwrap();
        assert_eq!(routed(&t, "logs.error"), ["a", "b"]);
        assert_eq!(routed(&t, "other"), ["b", "c"]);
        assert_eq!(t.unbind_all(&to("b")), 1);
        assert_eq!(routed(&t, "logs.error"), ["a"]);
    }
}
