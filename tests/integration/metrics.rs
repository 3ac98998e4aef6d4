//! Prometheus endpoint: RabbitMQ's metric names, valid text exposition
//! (every sample line parses and belongs to a family with HELP and TYPE),
//! per-object labels.

use crate::common;

use common::*;
use std::collections::HashSet;

/// A small validator of the text exposition format (0.0.4).
fn validate(text: &str) -> Vec<(String, String, f64)> {
    let mut typed: HashSet<String> = HashSet::new();
    let mut helped: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split_whitespace().next().unwrap().to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let name = it.next().unwrap().to_string();
            let kind = it.next().unwrap();
            assert!(["counter", "gauge", "untyped", "histogram", "summary"].contains(&kind), "{line}");
            assert!(typed.insert(name), "family typed twice: {line}");
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "stray line: {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                assert!(l.ends_with('}'), "{line}");
                (n.to_string(), l[..l.len() - 1].to_string())
            }
            None => (series.to_string(), String::new()),
        };
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "{line}");
        assert!(typed.contains(&name) && helped.contains(&name), "sample without HELP/TYPE: {line}");
        samples.push((name, labels, value));
    }
    samples
}

#[tokio::test]
async fn aggregated_and_per_object_metrics() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "metered").await;
    for _ in 0..3 {
        r.send_to(1, "metered", b"m").await;
    }
    assert_eq!(r.counts(1, "metered").await.0, 3);
    let addr = s.handle.as_ref().unwrap().metrics_addr;
    let agg = http(addr, "GET", "/metrics", None, None).await;
    assert_eq!(agg.status, 200);
    assert!(agg.header("content-type").unwrap().starts_with("text/plain"));
    let samples = validate(&String::from_utf8(agg.body).unwrap());
    let value = |name: &str| samples.iter().find(|(n, _, _)| n == name).map(|(_, _, v)| *v);
    assert_eq!(value("rabbitmq_queue_messages_ready"), Some(3.0));
    assert_eq!(value("rabbitmq_queues"), Some(1.0));
    assert_eq!(value("rabbitmq_connections"), Some(1.0));
    assert_eq!(value("rabbitmq_global_messages_received_total"), Some(3.0));
    assert!(value("rabbitmq_process_resident_memory_bytes").unwrap() > 0.0);

    let per = http(addr, "GET", "/metrics/per-object", None, None).await;
    let samples = validate(&String::from_utf8(per.body).unwrap());
    let ready = samples
        .iter()
        .find(|(n, l, _)| n == "rabbitmq_queue_messages_ready" && l.contains("queue=\"metered\""))
        .expect("per-queue sample");
    assert!(ready.1.contains("vhost=\"/\""));
    assert_eq!(ready.2, 3.0);
}
