//! `warren perf` against the real binary: throughput with confirms and
//! manual acks, latency at a fixed rate, the broker's CPU per message, and
//! the refusal of a non-loopback broker.

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

#[test]
fn a_broker_off_loopback_needs_allow_remote() {
    let (code, _, err) =
        perf(&["throughput", "--uri", "amqp://guest:guest@192.0.2.1:5672/%2f", "--seconds", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not a loopback address") && err.contains("--allow-remote"), "{err}");
}
