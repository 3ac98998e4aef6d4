//! The real binary: embedded defaults, --print-config, precedence of
//! environment and flags, named configuration errors with a non-zero exit,
//! the ports file, and SIGTERM → graceful exit 0.

use crate::common;

use std::process::Command;

fn warren() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    c.env_remove("RUST_LOG");
    c
}

#[test]
fn print_config_shows_embedded_defaults_and_overrides() {
    let out = warren().arg("--print-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("port = 5672"), "{text}");
    assert!(text.contains("port = 15672"));
    assert!(text.contains("data_dir = \"./data\""));

    // env overrides the default, a flag overrides env.
    let out = warren().args(["--print-config"]).env("WARREN_AMQP_PORT", "5999").output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("port = 5999"));
    let out = warren()
        .args(["--print-config", "--amqp-port", "6001"])
        .env("WARREN_AMQP_PORT", "5999")
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("port = 6001"));

    // A file overrides the default; env overrides the file.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("w.toml");
    std::fs::write(&f, "[amqp]\nheartbeat = 15\nport = 7000\n").unwrap();
    let out = warren()
        .args(["--print-config", "--config"])
        .arg(&f)
        .env("WARREN_AMQP_PORT", "7001")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("heartbeat = 15") && text.contains("port = 7001"), "{text}");
}

#[test]
fn set_reaches_any_key_between_env_and_the_named_flags() {
    let out = warren()
        .args(["--print-config", "--set", "alarms.disk_free_limit=123456789", "--set", "amqp.heartbeat=7"])
        .env("WARREN_AMQP_HEARTBEAT", "9")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("disk_free_limit = 123456789"), "{text}");
    assert!(text.contains("heartbeat = 7"), "--set beats the environment: {text}");
    // A named flag beats --set.
    let out =
        warren().args(["--print-config", "--set", "amqp.port=6100", "--amqp-port", "6200"]).output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("port = 6200"));
    // Unknown keys and bad values are named.
    for (arg, key) in [("amqp.nope=1", "amqp.nope"), ("amqp.heartbeat=x", "amqp.heartbeat"), ("nope", "nope")]
    {
        let out = warren().args(["--print-config", "--set", arg]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{arg}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(key), "{arg}");
    }
}

#[test]
fn invalid_configuration_names_the_key_and_exits_non_zero() {
    let out = warren().arg("--print-config").env("WARREN_AMQP_FRAME_MAX", "12").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("amqp.frame_max"), "{err}");
    let out = warren().arg("--print-config").env("WARREN_AMQP_PORT", "not-a-port").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("amqp.port"));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "[amqp]\nno_such_key = 1\n").unwrap();
    let out = warren().args(["--print-config", "--config"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("no_such_key"));
    // Settings that only make sense together name the one that is missing.
    for (set, key) in [
        ("management.tls=true", "management.tls"),
        ("amqp.listen_plain=false", "amqp.listen_plain"),
        ("alarms.memory_high_watermark=2", "alarms.memory_high_watermark"),
        ("log.output=syslog", "log.output"),
        ("runtime.worker_threads=5000", "runtime.worker_threads"),
    ] {
        let out = warren().args(["--print-config", "--set", set]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{set}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(key), "{set}");
    }
}

#[test]
fn binary_serves_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let child = common::Child::spawn(&dir.path().join("data"));
    let mut s = std::net::TcpStream::connect(child.amqp).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let mut head = [0u8; 7];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 1, "connection.start method frame");
    // SIGTERM: graceful shutdown, exit status 0.
    let status = child.terminate();
    assert!(status.success(), "{status:?}");
}

/// `runtime.worker_threads` sets how many threads serve connections (right
/// after startup the runtime has no other threads).
#[test]
fn the_worker_thread_setting_is_applied() {
    let workers = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "warren-rt"))
            .count()
    };
    for n in [1usize, 3] {
        let dir = tempfile::tempdir().unwrap();
        let set = format!("runtime.worker_threads={n}");
        let child = common::Child::spawn_with(&dir.path().join("data"), &["--set", &set]);
        assert_eq!(workers(child.process.id()), n, "{set}");
        assert!(child.terminate().success());
    }
}

#[test]
fn healthcheck_subcommand_reports_the_broker_state() {
    let dir = tempfile::tempdir().unwrap();
    let child = common::Child::spawn(&dir.path().join("data"));
    let port = child.mgmt.port().to_string();
    let out = warren().args(["--mgmt-port", &port, "healthcheck"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("healthy: {\"status\":\"ok\"}"), "{text}");
    // Wrong credentials: the broker answers 401, which is not healthy.
    let out = warren()
        .env("WARREN_AUTH_DEFAULT_PASS", "wrong")
        .args(["--mgmt-port", &port, "healthcheck"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("answered 401"));
    assert!(child.terminate().success());
    let out = warren().args(["--mgmt-port", &port, "healthcheck", "--timeout", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("unhealthy: cannot connect to 127.0.0.1:"), "{text}");
}

#[test]
fn healthcheck_counts_alarms_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    // A disk free limit no disk meets: the disk alarm is on from the start.
    let child = common::Child::spawn_with(
        &dir.path().join("data"),
        &["--set", "alarms.disk_free_limit=9000000000000000000"],
    );
    let port = child.mgmt.port().to_string();
    let out = warren().args(["--mgmt-port", &port, "healthcheck"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let out = warren().args(["--mgmt-port", &port, "healthcheck", "--fail-on-alarms"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("answered 503") && text.contains("disk space"), "{text}");
    assert!(child.terminate().success());
}
