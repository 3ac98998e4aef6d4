//! The broker's timer thread: calls queues back at the times they ask for
//! (message expiry, dead-lettering, `x-expires`). One thread and one heap for
//! the whole broker instead of a timer task per queue; dead-lettering runs
//! here, outside every queue lock, because it publishes into other queues.

use super::dead_letter::dead_letter;
use super::vhost::VHost;
use crate::queue::{Queue, Timer};
use parking_lot::{Condvar, Mutex};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};
use std::time::Duration;

struct Entry {
    at: u64,
    seq: u64,
    queue: Weak<Queue>,
    vhost: Weak<VHost>,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and the soonest must come first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default)]
pub struct Timers {
    heap: Mutex<(BinaryHeap<Entry>, u64)>,
    wake: Condvar,
}

impl std::fmt::Debug for Timers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Timers")
    }
}

impl Timers {
    /// Starts the thread; it ends once the returned handle is dropped.
    pub fn start() -> std::io::Result<Arc<Timers>> {
        let t = Arc::new(Timers::default());
        let weak = Arc::downgrade(&t);
        std::thread::Builder::new().name("warren-timers".into()).spawn(move || run(weak))?;
        Ok(t)
    }

    fn add(&self, at: u64, queue: Weak<Queue>, vhost: Weak<VHost>) {
        let mut h = self.heap.lock();
        h.1 += 1;
        let seq = h.1;
        let sooner = h.0.peek().is_none_or(|top| at < top.at);
        h.0.push(Entry { at, seq, queue, vhost });
        drop(h);
        if sooner {
            self.wake.notify_one();
        }
    }
}

fn run(weak: Weak<Timers>) {
    loop {
        let Some(t) = weak.upgrade() else { return };
        let due = {
            let mut h = t.heap.lock();
            let now = crate::queue::now_ms();
            match h.0.peek() {
                Some(top) if top.at <= now => h.0.pop(),
                Some(top) => {
                    let wait = Duration::from_millis((top.at - now).min(1000));
                    t.wake.wait_for(&mut h, wait);
                    None
                }
                None => {
                    t.wake.wait_for(&mut h, Duration::from_secs(1));
                    None
                }
            }
        };
        drop(t);
        if let Some(e) = due {
            fire(e);
        }
    }
}

fn fire(e: Entry) {
    let (Some(q), Some(v)) = (e.queue.upgrade(), e.vhost.upgrade()) else { return };
    let (dead, delete) = q.on_timer();
    if let Some(xname) = &q.delay_for {
        // A delayed exchange's waiting messages are due: route them now.
        if let Ok(x) = v.exchange(xname) {
            for (msg, _) in dead {
                let mut keys: Vec<bytes::Bytes> = vec![msg.routing_key.clone()];
                let headers = msg.headers();
                if let Some(h) = &headers {
                    keys.extend(crate::message::cc_bcc(h).unwrap_or_default());
                }
                let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
                let mut targets = Vec::new();
                v.route(&x, &refs, headers.as_ref(), &mut targets);
                for t in targets {
                    t.publish(msg.clone(), None);
                }
            }
        }
    } else {
        for (msg, reason) in dead {
            dead_letter(&v, &q, &msg, reason);
        }
    }
    if delete {
        tracing::info!(queue = %q.name, "queue expired (x-expires)");
        v.remove_queue(&q);
    }
}

/// What a queue of one vhost is given to schedule itself.
#[derive(Debug)]
pub struct VHostTimer {
    pub timers: Arc<Timers>,
    pub vhost: Weak<VHost>,
}

impl Timer for VHostTimer {
    fn schedule(&self, at_ms: u64, queue: Weak<Queue>) {
        self.timers.add(at_ms, queue, self.vhost.clone());
    }
}
