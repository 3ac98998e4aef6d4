//! `warren perf` against the real binary: throughput with confirms and
//! manual acks, latency at a fixed rate, fanout, backlog fill and drain,
//! mass connections, connection churn, many queues, the broker's CPU and
//! memory figures, and the refusal of a non-loopback broker.

use crate::common;

use common::Child;
use std::process::Command;

fn perf(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warren")).arg("perf").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json =
        stdout.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(serde_json::Value::Null);
    (out.status.code(), json, stderr)
}

#[test]
fn throughput_and_latency_against_warren() {
    let dir = tempfile::tempdir().unwrap();
    let child = Child::spawn(&dir.path().join("data"));
    let uri = format!("amqp://guest:guest@127.0.0.1:{}/%2f", child.amqp.port());
    let pid = child.process.id().to_string();
    let (code, r, err) = perf(&[
        "throughput",
        "--uri",
        &uri,
        "--seconds",
        "2",
        "--confirm",
        "64",
        "--persistent",
        "--size",
        "1024",
        "--ack-every",
        "10",
        "--broker-pid",
        &pid,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("published") && err.contains("msg/s"), "progress lines: {err}");
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert!(n("confirmed") > 0 && n("consumed") > 0, "{r}");
    assert!(n("confirmed") <= n("published") && n("consumed") <= n("published"), "{r}");
    assert!(n("published") - n("confirmed") <= 64, "at most the window unconfirmed: {r}");
    assert_eq!(r["nacked"], 0);
    assert!(r["broker_cpu_us_per_msg"].as_f64().unwrap() > 0.0, "{r}");

    let (code, r, err) = perf(&["latency", "--uri", &uri, "--seconds", "2", "--rate", "500", "--quiet"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.is_empty(), "--quiet: {err}");
    let l = &r["latency_us"];
    let samples = l["samples"].as_u64().unwrap();
    assert!((800..=1100).contains(&samples), "about 500/s for 2 s: {r}");
    let (p50, p99, max) =
        (l["p50"].as_f64().unwrap(), l["p99"].as_f64().unwrap(), l["max"].as_f64().unwrap());
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{r}");
    assert!(child.terminate().success());
}

/// Names of the broker's queues and exchanges that a perf run made.
fn leftovers(child: &Child) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut names = Vec::new();
    for path in ["/api/queues", "/api/exchanges"] {
        let r = rt.block_on(common::http(child.mgmt, "GET", path, Some(("guest", "guest")), None));
        for o in r.json().as_array().unwrap() {
            let name = o["name"].as_str().unwrap_or("");
            if name.starts_with("warren-perf-") {
                names.push(name.to_string());
            }
        }
    }
    names
}

#[test]
fn fanout_backlog_connections_churn_and_queues_against_warren() {
    let dir = tempfile::tempdir().unwrap();
    let child = Child::spawn(&dir.path().join("data"));
    let uri = format!("amqp://guest:guest@127.0.0.1:{}/%2f", child.amqp.port());
    let pid = child.process.id().to_string();
    let run_on = |uri: &str, pid: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--uri", uri, "--broker-pid", pid, "--quiet"]);
        let (code, r, err) = perf(&all);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert_eq!(r["scenario"], args[0], "{r}");
        r
    };
    let run = |args: &[&str]| run_on(&uri, &pid, args);
    // The resident-set figures need a broker that is not still giving back
    // memory from an earlier scenario: each of those runs on a fresh one.
    let run_fresh = |args: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let child = Child::spawn(&dir.path().join("data"));
        let uri = format!("amqp://guest:guest@127.0.0.1:{}/%2f", child.amqp.port());
        let r = run_on(&uri, &child.process.id().to_string(), args);
        assert_eq!(leftovers(&child), Vec::<String>::new(), "{args:?} removes what it declared");
        assert!(child.terminate().success());
        r
    };
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));

    // Fanout: every consumed message is one delivery from one of 4 queues.
    let r = run(&["fanout", "--queues", "4", "--seconds", "2", "--queue", "ignored-by-fanout"]);
    assert_eq!(r["queues"], 4);
    assert_eq!(r["consumers"], 4);
    let (published, consumed) = (f(&r, "published"), f(&r, "consumed"));
    assert!(consumed > published && consumed <= 4.0 * published, "each message reaches several queues: {r}");
    assert!(f(&r, "routed_per_s") > 0.0 && f(&r, "broker_cpu_us_per_delivery") > 0.0, "{r}");

    // Backlog: the broker holds all of them, then they all drain.
    let r = run_fresh(&["backlog", "--messages", "20000", "--size", "200"]);
    assert_eq!((r["messages"].as_u64(), r["size"].as_u64()), (Some(20000), Some(200)));
    assert!(f(&r, "publish_per_s") > 0.0 && f(&r, "drain_per_s") > 0.0, "{r}");
    // 20,000 bodies of 200 B held in memory show in the resident set.
    assert!(f(&r, "rss_bytes_per_msg") > 0.0 && f(&r, "rss_full_kib") > f(&r, "rss_before_kib"), "{r}");

    // Connections: all open at once, then closed.
    let r = run(&["connections", "--connections", "300", "--parallel", "8", "--hold", "0"]);
    assert_eq!(r["connections"], 300);
    let r = run_fresh(&["connections", "--connections", "300", "--parallel", "8", "--hold", "0"]);
    assert_eq!(r["connections"], 300);
    assert!(f(&r, "open_per_s") > 0.0 && f(&r, "open_p50_ms") > 0.0, "{r}");
    assert!(f(&r, "rss_kib_per_conn") > 0.0, "300 connections show in the resident set: {r}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r =
            rt.block_on(common::http(child.mgmt, "GET", "/api/connections", Some(("guest", "guest")), None));
        if r.json().as_array().unwrap().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "connections left open: {}", r.json());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Churn: connections opened and closed for a second.
    let r = run(&["churn", "--seconds", "1", "--parallel", "4"]);
    assert!(f(&r, "connections") > 0.0 && f(&r, "connections_per_s") > 0.0, "{r}");
    assert!(f(&r, "broker_cpu_us_per_conn") > 0.0, "{r}");

    // Queues: declared, bound and deleted.
    let r = run_fresh(&["queues", "--queues", "3000", "--parallel", "3", "--pipeline", "50"]);
    assert_eq!(r["queues"], 3000);
    assert!(f(&r, "declared_per_s") > 0.0 && f(&r, "deleted_per_s") > 0.0, "{r}");
    assert!(f(&r, "rss_bytes_per_queue") > 0.0, "3,000 queues show in the resident set: {r}");

    assert_eq!(leftovers(&child), Vec::<String>::new(), "every run removes what it declared");
    assert!(child.terminate().success());
}

#[test]
fn a_broker_off_loopback_needs_allow_remote() {
    let (code, _, err) =
        perf(&["throughput", "--uri", "amqp://guest:guest@192.0.2.1:5672/%2f", "--seconds", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not a loopback address") && err.contains("--allow-remote"), "{err}");
}

#[test]
fn an_ack_interval_above_the_prefetch_is_refused() {
    let (code, _, err) = perf(&["throughput", "--ack-every", "200", "--prefetch", "100", "--seconds", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--ack-every 200 is above --prefetch 100"), "{err}");
}
