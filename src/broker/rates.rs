//! Message rates as RabbitMQ's management shows them (`*_details.rate`):
//! counters are sampled every `management.sample_interval_ms` (RabbitMQ's
//! `collect_statistics_interval`, 5 s) and a rate is the change per second
//! between the last two samples. Counters stay plain atomics on the hot
//! path; only the sampler task touches these cells, and readers copy them.

use super::Broker;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The last sample of `N` counters and the rates derived from it.
#[derive(Debug)]
pub struct RateCell<const N: usize>(Mutex<Sample<N>>);

#[derive(Debug)]
struct Sample<const N: usize> {
    at: Option<Instant>,
    last: [u64; N],
    rate: [f64; N],
}

impl<const N: usize> Default for RateCell<N> {
    fn default() -> Self {
        RateCell(Mutex::new(Sample { at: None, last: [0; N], rate: [0.0; N] }))
    }
}

impl<const N: usize> RateCell<N> {
    /// Records `values` taken at `now`; rates are per second since the
    /// previous sample (negative for a gauge going down, as RabbitMQ).
    pub fn sample(&self, now: Instant, values: [u64; N]) {
        let mut s = self.0.lock();
        if let Some(at) = s.at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            if dt > 0.0 {
                for (i, v) in values.iter().enumerate() {
                    let per_s = (*v as f64 - s.last[i] as f64) / dt;
                    // One decimal, as the management API prints rates.
                    s.rate[i] = (per_s * 10.0).round() / 10.0;
                }
            }
        }
        s.at = Some(now);
        s.last = values;
    }

    pub fn get(&self) -> [f64; N] {
        self.0.lock().rate
    }
}

/// What a queue's rates cover, in this order.
pub const QUEUE_RATES: [&str; 11] = [
    "publish",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "deliver_get",
    "ack",
    "redeliver",
    "messages",
    "messages_ready",
    "messages_unacknowledged",
];
pub type QueueRates = RateCell<11>;

/// A vhost's own message rates (the rest are its queues' summed).
pub const VHOST_RATES: [&str; 4] = ["confirm", "return_unroutable", "drop_unroutable", "get_empty"];

/// An exchange's rates: `publish_in`, `publish_out`.
pub type ExchangeRates = RateCell<2>;

/// The overview's rates, in this order (message_stats, queue_totals, churn).
pub const OVERVIEW_RATES: [&str; 24] = [
    "ack",
    "confirm",
    "deliver",
    "deliver_get",
    "deliver_no_ack",
    "drop_unroutable",
    "get",
    "get_empty",
    "get_no_ack",
    "publish",
    "redeliver",
    "return_unroutable",
    "disk_reads",
    "disk_writes",
    "messages",
    "messages_ready",
    "messages_unacknowledged",
    "connection_created",
    "connection_closed",
    "channel_created",
    "channel_closed",
    "queue_created",
    "queue_declared",
    "queue_deleted",
];
pub type OverviewRates = RateCell<24>;

/// A connection's rates: `recv_oct`, `send_oct`.
pub type ConnectionRates = RateCell<2>;

/// A channel's rates, in this order.
pub const CHANNEL_RATES: [&str; 12] = [
    "publish",
    "confirm",
    "ack",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "get_empty",
    "deliver_get",
    "redeliver",
    "return_unroutable",
    "drop_unroutable",
];
pub type ChannelRates = RateCell<12>;

/// The rate of `key` from a cell's rates named by `keys` (0 if unknown).
pub fn rate_of<const N: usize>(keys: &[&str; N], rates: &[f64; N], key: &str) -> f64 {
    keys.iter().position(|k| *k == key).map(|i| rates[i]).unwrap_or(0.0)
}

/// Samples every queue, exchange, connection and channel, and the broker's
/// totals, until the broker is dropped.
pub async fn sampler(broker: std::sync::Weak<Broker>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(b) = broker.upgrade() else { return };
        sample_all(&b);
    }
}

pub fn sample_all(b: &Arc<Broker>) {
    let now = Instant::now();
    for v in b.vhosts.iter() {
        v.msg.rates.sample(now, v.msg.values());
        for q in v.queues.iter() {
            q.sample_rates(now);
        }
        for x in v.exchanges.iter() {
            x.rates
                .sample(now, [x.publish_in.load(Ordering::Relaxed), x.publish_out.load(Ordering::Relaxed)]);
        }
    }
    for c in b.registry.all() {
        c.sample_rates(now);
    }
    let totals = b.overview_counters();
    b.rates.sample(now, totals);
}
