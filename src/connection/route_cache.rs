//! The last exchange a connection published to, and the last queue its
//! default-exchange publishes reached, so that a stream of publishes to one
//! destination does not look names up in the vhost's maps every time (two
//! exchange lookups and a queue lookup per publish were 9% of the transient
//! path's instructions under callgrind).
//!
//! An entry is used only while its exchange or queue is not deleted; a
//! deleted one (even if redeclared under the same name since) is looked up
//! again. A publish racing a deletion behaves as if it came just before it,
//! as with a map lookup made a moment earlier.

use crate::broker::vhost::VHost;
use crate::error::AmqpResult;
use crate::exchange::Exchange;
use crate::queue::Queue;
use std::sync::Arc;

#[derive(Default)]
pub struct RouteCache {
    exchange: Option<Arc<Exchange>>,
    default_route: Option<Arc<Queue>>,
}

impl RouteCache {
    /// The exchange named `name` (404 if there is none).
    pub fn exchange(&mut self, vhost: &VHost, name: &[u8]) -> AmqpResult<Arc<Exchange>> {
        if let Some(x) = &self.exchange
            && same_bytes(x.name.as_bytes(), name)
            && !x.is_deleted()
        {
            return Ok(x.clone());
        }
        let x = vhost.exchange(std::str::from_utf8(name).unwrap_or(""))?;
        self.exchange = Some(x.clone());
        Ok(x)
    }

    /// The queue a default-exchange publish with `routing_key` reaches, if
    /// it is the one remembered.
    pub fn default_route(&self, routing_key: &[u8]) -> Option<Arc<Queue>> {
        self.default_route
            .as_ref()
            .filter(|q| same_bytes(q.name.as_bytes(), routing_key) && !q.is_deleted())
            .cloned()
    }

    /// Remembers where a default-exchange publish went.
    pub fn remember_default_route(&mut self, queue: &Arc<Queue>) {
        self.default_route = Some(queue.clone());
    }
}

/// `a == b`, without calling `memcmp` for empty names. The default
/// exchange's name is an empty `String`, whose pointer is dangling; glibc's
/// AVX-512 `memcmp` still issues a masked load from it, and the fault
/// suppression costs a microcode assist: this one comparison was 6% of the
/// broker's samples in amqp-bench's transient scenario.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

#[cfg(test)]
mod tests {
    use super::RouteCache;
    use crate::broker::Broker;
    use crate::broker::vhost::QueueDeclare;
    use crate::config::Config;
    use crate::protocol::FieldTable;

    #[test]
    fn a_deleted_exchange_or_queue_is_looked_up_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.storage.data_dir = dir.path().to_path_buf();
        let broker = Broker::open(config).expect("broker");
        let vhost = broker.vhost("/").expect("default vhost");
        let mut cache = RouteCache::default();

        vhost
            .declare_exchange("x", "direct", false, false, false, false, FieldTable::default())
            .expect("declare");
        let first = cache.exchange(&vhost, b"x").expect("x");
        assert!(std::sync::Arc::ptr_eq(&first, &cache.exchange(&vhost, b"x").expect("x")));
        vhost.delete_exchange("x", false).expect("delete");
        assert_eq!(cache.exchange(&vhost, b"x").err().map(|e| e.code), Some(404));
        vhost
            .declare_exchange("x", "fanout", false, false, false, false, FieldTable::default())
            .expect("again");
        let second = cache.exchange(&vhost, b"x").expect("x again");
        assert!(!std::sync::Arc::ptr_eq(&first, &second));
        assert_eq!(second.kind, crate::exchange::Kind::Fanout);

        let (q, _) = vhost
            .declare_queue(QueueDeclare {
                name: "q",
                server_named: false,
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                arguments: FieldTable::default(),
                conn_id: 1,
            })
            .expect("queue");
        cache.remember_default_route(&q);
        assert!(cache.default_route(b"q").is_some());
        assert!(cache.default_route(b"other").is_none());
        vhost.remove_queue(&q);
        assert!(cache.default_route(b"q").is_none());
    }
}
