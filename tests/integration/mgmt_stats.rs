//! Management statistics with values, not only RabbitMQ's field names:
//! sampled rates (`*_details.rate`) on the overview, queues, exchanges,
//! connections, channels and vhosts, and per-channel message counters.

use crate::common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

async fn get(s: &TestServer, path: &str) -> Value {
    let r = http(mgmt(s), "GET", path, GUEST, None).await;
    assert_eq!(r.status, 200, "GET {path}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn rate(v: &Value, path: &str) -> f64 {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(|r| r.as_f64())
        .unwrap_or_else(|| panic!("no number at {path} in {v}"))
}

/// Publishes 20 messages to `q` every 50 ms (about 400 msg/s) until every
/// rate named in `want` reads positive, or panics at the deadline.
async fn publish_until_rates(s: &TestServer, r: &mut Raw, q: &str, want: &[(&str, &str)]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    loop {
        for _ in 0..20 {
            r.send_to(1, q, b"rate-sample").await;
        }
        sent += 20;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut missing = Vec::new();
        for (path, field) in want {
            let v = get(s, path).await;
            let v = if v.is_array() { v[0].clone() } else { v };
            if rate(&v, field) <= 0.0 {
                missing.push(format!("{path} {field}"));
            }
        }
        if missing.is_empty() {
            return sent;
        }
        assert!(Instant::now() < deadline, "rates still zero: {missing:?}");
    }
}

#[tokio::test]
async fn rates_follow_the_traffic_and_fall_back_to_zero() {
    let s = start_with(|c| c.management.sample_interval_ms = 200).await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "rated").await;
    let sent = publish_until_rates(
        &s,
        &mut r,
        "rated",
        &[
            ("/api/overview", "message_stats.publish_details.rate"),
            ("/api/overview", "queue_totals.messages_details.rate"),
            ("/api/queues/%2F/rated", "message_stats.publish_details.rate"),
            ("/api/queues/%2F/rated", "messages_ready_details.rate"),
            ("/api/exchanges/%2F/amq.default", "message_stats.publish_in_details.rate"),
            ("/api/vhosts/%2F", "message_stats.publish_details.rate"),
            ("/api/connections", "recv_oct_details.rate"),
            ("/api/channels", "message_stats.publish_details.rate"),
        ],
    )
    .await;
    // Rates are per second: nowhere near the count of messages sent (a rate
    // that echoed a counter would be).
    let o = get(&s, "/api/overview").await;
    let publish_rate = rate(&o, "message_stats.publish_details.rate");
    assert!(publish_rate < 5_000.0, "publish rate {publish_rate} for ~400 msg/s");
    assert_eq!(o["churn_rates"]["queue_declared"], 1);
    assert_eq!(o["churn_rates"]["channel_created"], 1);
    assert_eq!(o["churn_rates"]["connection_created"], 1);
    eventually_async("counters catch up", || async {
        let q = get(&s, "/api/queues/%2F/rated").await;
        q["message_stats"]["publish"] == sent && q["messages"] == sent
    })
    .await;

    // Traffic stops: two samples later every rate is 0 again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = get(&s, "/api/overview").await;
        let q = get(&s, "/api/queues/%2F/rated").await;
        if rate(&o, "message_stats.publish_details.rate") == 0.0
            && rate(&q, "message_stats.publish_details.rate") == 0.0
            && rate(&q, "messages_details.rate") == 0.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "rates did not return to zero: {o}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Draining gives a negative depth rate and a positive delivery rate.
    r.open_channel(2).await;
    r.call(2, common::m::consume("rated", "drain", true, false, Default::default())).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = get(&s, "/api/queues/%2F/rated").await;
        if rate(&q, "messages_details.rate") < 0.0
            && rate(&q, "message_stats.deliver_no_ack_details.rate") > 0.0
        {
            break;
        }
        while r.try_recv(Duration::from_millis(1)).await.is_some() {}
        assert!(Instant::now() < deadline, "no drain rates: {q}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls an async condition with a deadline.
async fn eventually_async<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn channel(chans: &Value, n: u16) -> Value {
    chans.as_array().and_then(|a| a.iter().find(|c| c["number"] == n)).cloned().unwrap_or(Value::Null)
}

#[tokio::test]
async fn channels_count_their_own_publishes_deliveries_gets_and_acks() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "counted").await;
    r.call(1, common::m::confirm_select()).await;
    for _ in 0..5 {
        r.send_to(1, "counted", b"m").await;
    }
    r.send_to(1, "nowhere", b"dropped").await;
    let mut acked = 0;
    while acked < 6 {
        if let In::Method(
            1,
            amq_protocol::protocol::AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Ack(a)),
        ) = r.recv().await
        {
            acked = a.delivery_tag;
        }
    }
    // Channel 2 gets two with ack, rejects one (requeued), gets it again
    // (a redelivery), one without ack, and finds the queue empty... later.
    r.open_channel(2).await;
    r.method(2, common::m::get("counted", false)).await;
    let first = r.next_message().await;
    r.method(2, common::m::get("counted", false)).await;
    let second = r.next_message().await;
    r.method(2, common::m::reject(second.delivery_tag(), true)).await;
    r.method(2, common::m::ack(first.delivery_tag(), false)).await;
    r.method(2, common::m::get("counted", false)).await;
    let again = r.next_message().await;
    assert!(again.redelivered());
    r.method(2, common::m::ack(again.delivery_tag(), false)).await;
    for _ in 0..3 {
        r.method(2, common::m::get("counted", true)).await;
        r.next_message().await;
    }
    r.method(2, common::m::get("counted", true)).await;
    let empty = r.next_message().await;
    assert!(matches!(
        empty.method,
        amq_protocol::protocol::AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::GetEmpty(_))
    ));

    let deadline = Instant::now() + Duration::from_secs(10);
    let (publisher, getter) = loop {
        let chans = get(&s, "/api/channels").await;
        let (p, g) = (channel(&chans, 1), channel(&chans, 2));
        if p["message_stats"]["publish"] == 6 && g["message_stats"]["get_empty"] == 1 {
            break (p, g);
        }
        assert!(Instant::now() < deadline, "channel counters not updated: {chans}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ps = &publisher["message_stats"];
    assert_eq!(
        (ps["publish"].clone(), ps["confirm"].clone(), ps["drop_unroutable"].clone()),
        (6.into(), 6.into(), 1.into())
    );
    assert!(ps.get("deliver").is_none(), "a publishing channel shows publishing keys only: {ps}");
    let gs = &getter["message_stats"];
    let n = |k: &str| gs[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(
        (n("get"), n("get_no_ack"), n("ack"), n("redeliver"), n("deliver_get"), n("get_empty")),
        (3, 3, 2, 1, 6, 1),
        "{gs}"
    );
    assert!(gs.get("publish").is_none(), "{gs}");

    // The queue counts the same gets, and its redelivery.
    let q = get(&s, "/api/queues/%2F/counted").await;
    let qs = &q["message_stats"];
    assert_eq!(
        (qs["get"].clone(), qs["get_no_ack"].clone(), qs["redeliver"].clone()),
        (3.into(), 3.into(), 1.into())
    );
    assert_eq!(get(&s, "/api/overview").await["message_stats"]["get_empty"], 1);
    // The vhost counts what belongs to no queue: confirms, unroutable, empty gets.
    let v = get(&s, "/api/vhosts/%2F").await;
    let vs = &v["message_stats"];
    assert_eq!(
        (vs["confirm"].clone(), vs["drop_unroutable"].clone(), vs["get_empty"].clone(), vs["get"].clone()),
        (6.into(), 1.into(), 1.into(), 3.into()),
        "{vs}"
    );
}

#[tokio::test]
async fn management_gets_of_a_requeued_message_count_a_redelivery() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "peeked").await;
    r.send_to(1, "peeked", b"look").await;
    eventually_async("message queued", || async { get(&s, "/api/queues/%2F/peeked").await["messages"] == 1 })
        .await;
    for _ in 0..2 {
        let got = http(
            mgmt(&s),
            "POST",
            "/api/queues/%2F/peeked/get",
            GUEST,
            Some(r#"{"count":1,"ackmode":"ack_requeue_true","encoding":"auto"}"#),
        )
        .await;
        assert_eq!(got.status, 200);
    }
    let q = get(&s, "/api/queues/%2F/peeked").await;
    assert_eq!(
        (q["message_stats"]["get"].clone(), q["message_stats"]["redeliver"].clone()),
        (2.into(), 1.into())
    );
}

/// Body bytes of ready and of unacked messages, in the queue object and in
/// Prometheus (`message_bytes` = ready + unacked, as RabbitMQ).
#[tokio::test]
async fn message_bytes_count_ready_and_unacked_bodies() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "sized").await;
    for body in [&[b'a'; 10][..], &[b'b'; 20][..], &[b'c'; 30][..]] {
        r.send_to(1, "sized", body).await;
    }
    assert_eq!(r.counts(1, "sized").await.0, 3);
    r.call(1, m::qos(2, false)).await;
    r.call(1, m::consume("sized", "c", false, false, Default::default())).await;
    let first = r.next_message().await;
    let second = r.next_message().await;
    assert_eq!((first.body.len(), second.body.len()), (10, 20));
    let bytes = |q: &Value| {
        ["message_bytes", "message_bytes_ready", "message_bytes_unacknowledged", "message_bytes_ram"]
            .map(|k| q[k].as_u64().unwrap_or_else(|| panic!("{k} in {q}")))
    };
    let q = get(&s, "/api/queues/%2F/sized").await;
    assert_eq!(bytes(&q), [60, 30, 30, 60], "{q}");
    let metric = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("queue=\"sized\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} for sized in\n{text}"))
    };
    let addr = s.handle.as_ref().unwrap().metrics_addr;
    let per = String::from_utf8(http(addr, "GET", "/metrics/per-object", None, None).await.body).unwrap();
    assert_eq!(
        [
            "rabbitmq_queue_messages_bytes",
            "rabbitmq_queue_messages_ready_bytes",
            "rabbitmq_queue_messages_unacked_bytes"
        ]
        .map(|n| metric(&per, n)),
        [60.0, 30.0, 30.0]
    );
    // Acking the 10-byte one lets the 30-byte one out (prefetch 2): 20 + 30
    // unacked, nothing ready.
    r.method(1, m::ack(first.delivery_tag(), false)).await;
    let third = r.next_message().await;
    assert_eq!(third.body.len(), 30);
    assert_eq!(bytes(&get(&s, "/api/queues/%2F/sized").await), [50, 0, 50, 50]);
    // Requeued deliveries count as ready again; acked ones are gone.
    r.method(1, m::ack(third.delivery_tag(), false)).await;
    r.call(1, m::cancel("c")).await;
    r.method(1, m::nack(second.delivery_tag(), false, true)).await;
    eventually("the nacked message ready again", Duration::from_secs(5), || {
        s.broker()
            .vhosts
            .get("/")
            .is_some_and(|v| v.queues.get("sized").is_some_and(|q| q.message_bytes() == (20, 0)))
    })
    .await;
    assert_eq!(bytes(&get(&s, "/api/queues/%2F/sized").await), [20, 20, 0, 20]);
}

/// Persistent messages (delivery mode 2 in a durable queue) and messages
/// paged out to the log are counted as RabbitMQ counts them: in the queue's
/// management JSON, in the per-queue Prometheus families, and as disk
/// writes and reads in the overview.
#[tokio::test]
async fn persistent_and_paged_out_messages_are_counted() {
    use amq_protocol::protocol::basic::AMQPProperties;
    // No memory budget: every message behind the first is paged out.
    let s = start_with(|c| c.memory.queue_budget = 0).await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::qdecl("pq", false, true, false, false, Default::default())).await;
    let persistent = props(AMQPProperties::default().with_delivery_mode(2));
    r.publish(1, "", "pq", false, &persistent, &[b'p'; 100]).await;
    r.publish(1, "", "pq", false, &persistent, &[b'q'; 100]).await;
    r.publish(1, "", "pq", false, &[], &[b't'; 50]).await;
    assert_eq!(r.counts(1, "pq").await.0, 3);
    let fields = |q: &Value, keys: &[&str]| -> Vec<u64> {
        keys.iter().map(|k| q[*k].as_u64().unwrap_or_else(|| panic!("{k} in {q}"))).collect()
    };
    let keys = [
        "messages_persistent",
        "message_bytes_persistent",
        "messages_paged_out",
        "message_bytes_paged_out",
        "messages_ram",
        "message_bytes_ram",
        "messages_ready_ram",
    ];
    let q = get(&s, "/api/queues/%2F/pq").await;
    assert_eq!(fields(&q, &keys), [2, 200, 2, 150, 1, 100, 1], "{q}");
    let addr = s.handle.as_ref().unwrap().metrics_addr;
    let per = String::from_utf8(http(addr, "GET", "/metrics/per-object", None, None).await.body).unwrap();
    let metric = |name: &str| {
        per.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("queue=\"pq\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} for pq in\n{per}"))
    };
    assert_eq!(
        [
            "rabbitmq_queue_messages_persistent",
            "rabbitmq_queue_messages_persistent_bytes",
            "rabbitmq_queue_messages_paged_out",
            "rabbitmq_queue_messages_paged_out_bytes",
            "rabbitmq_queue_messages_ram",
            "rabbitmq_queue_disk_writes_total",
            "rabbitmq_queue_disk_reads_total",
        ]
        .map(metric),
        [2.0, 200.0, 2.0, 150.0, 1.0, 3.0, 0.0]
    );
    // A transient message in a non-durable queue is neither.
    r.declare(1, "tq").await;
    r.publish(1, "", "tq", false, &persistent, b"x").await;
    assert_eq!(r.counts(1, "tq").await.0, 1);
    let tq = get(&s, "/api/queues/%2F/tq").await;
    assert_eq!(fields(&tq, &keys[..4]), [0, 0, 0, 0], "{tq}");

    // One delivery (prefetch 1): the head goes out unacked, still
    // persistent; the two behind it are read back from the log together.
    r.call(1, m::qos(1, false)).await;
    r.call(1, m::consume("pq", "c", false, false, Default::default())).await;
    let first = r.next_message().await;
    assert_eq!(first.body, [b'p'; 100]);
    eventually("the paged messages read back", Duration::from_secs(5), || {
        s.broker().vhost("/").unwrap().queue("pq").unwrap().storage().1.count == 0
    })
    .await;
    let q = get(&s, "/api/queues/%2F/pq").await;
    assert_eq!(fields(&q, &keys), [2, 200, 0, 0, 3, 250, 2], "{q}");
    let overview = get(&s, "/api/overview").await;
    assert_eq!(
        (overview["message_stats"]["disk_writes"].as_u64(), overview["message_stats"]["disk_reads"].as_u64()),
        (Some(3), Some(2)),
        "{overview}"
    );
    // The store's file I/O, as RabbitMQ's node `io_*` fields and
    // `rabbitmq_io_*_total` families: the three records written (two of
    // them persistent, so synced), the two pages read back in one run; in
    // bytes at least their bodies (100 + 100 + 50 written, 100 + 50 read).
    let node = get(&s, "/api/nodes").await[0].clone();
    let io = |k: &str| node[k].as_u64().unwrap_or_else(|| panic!("{k} in {node}"));
    assert!(io("io_write_count") >= 1 && io("io_write_bytes") >= 250, "{node}");
    assert!(io("io_sync_count") >= 1, "{node}");
    assert!(io("io_read_count") >= 1 && io("io_read_bytes") >= 150, "{node}");
    let metrics = String::from_utf8(http(addr, "GET", "/metrics", None, None).await.body).unwrap();
    let total = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert!(total("rabbitmq_io_write_bytes_total") >= 250.0);
    assert!(total("rabbitmq_io_sync_ops_total") >= 1.0);
    assert!(total("rabbitmq_io_read_bytes_total") >= 150.0);
    // Acked: gone from the persistent count.
    r.method(1, m::ack(first.delivery_tag(), false)).await;
    let second = r.next_message().await;
    assert_eq!(second.body, [b'q'; 100]);
    r.method(1, m::ack(second.delivery_tag(), false)).await;
    let third = r.next_message().await;
    assert_eq!(third.body, [b't'; 50]);
    eventually("only the transient one left, unacked", Duration::from_secs(5), || {
        s.broker().vhost("/").unwrap().queue("pq").unwrap().storage().0 == Default::default()
    })
    .await;
}
