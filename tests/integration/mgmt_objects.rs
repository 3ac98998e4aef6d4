//! Management API beyond the basics: bindings (properties keys, Location),
//! publishing and getting messages, definitions export and import (a real
//! RabbitMQ export loads, its password hashes log in), list pagination and
//! columns, nodes and the aliveness test — compared with RabbitMQ's samples.

use crate::common;

use common::*;
use serde_json::{Value, json};

fn sample(name: &str) -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/docs/mgmt-samples").join(name);
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("sample JSON")
}

/// Every key of the sample object is present in ours with the same JSON type.
fn assert_keys(what: &str, want: &Value, got: &Value) {
    let (Some(w), Some(g)) = (want.as_object(), got.as_object()) else {
        panic!("{what}: not objects: {got}")
    };
    for (k, v) in w.iter().filter(|(k, _)| !k.starts_with('_')) {
        let Some(gv) = g.get(k) else { panic!("{what}: key {k} missing in {got}") };
        let same = std::mem::discriminant(v) == std::mem::discriminant(gv) || v.is_null();
        assert!(same, "{what}.{k}: {v} in RabbitMQ, {gv} in Warren");
    }
}

async fn call(s: &TestServer, method: &str, path: &str, body: Option<Value>) -> HttpReply {
    http(mgmt(s), method, path, GUEST, body.map(|b| b.to_string()).as_deref()).await
}

#[tokio::test]
async fn bindings_are_listed_created_and_deleted_by_properties_key() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "cq").await;
    r.call(1, m::x("ex1", "direct")).await;
    let created = call(&s, "POST", "/api/bindings/%2F/e/ex1/q/cq", Some(json!({"routing_key": "k1"}))).await;
    assert_eq!(created.status, 201);
    assert_eq!(created.header("location"), Some("cq/k1"));
    let odd = call(&s, "POST", "/api/bindings/%2F/e/ex1/q/cq", Some(json!({"routing_key": "a b~c/d"}))).await;
    assert_eq!(odd.header("location"), Some("cq/a%2Bb%257Ec%252Fd"), "the key is quoted, then quoted again");
    let empty = call(&s, "POST", "/api/bindings/%2F/e/ex1/q/cq", Some(json!({}))).await;
    assert_eq!(empty.header("location"), Some("cq/~"));
    let with_args = call(
        &s,
        "POST",
        "/api/bindings/%2F/e/ex1/q/cq",
        Some(json!({"routing_key": "k2", "arguments": {"x-foo": "bar"}})),
    )
    .await;
    let loc = with_args.header("location").expect("location").to_string();
    assert!(loc.starts_with("cq/k2~"), "{loc}");

    let all = call(&s, "GET", "/api/bindings/%2F", None).await.json();
    let want = sample("api-bindings-sample.json");
    for item in all.as_array().expect("list") {
        assert_keys("binding", &want[0], item);
    }
    let default = all.as_array().unwrap().iter().find(|b| b["source"] == "" && b["destination"] == "cq");
    assert_eq!(default.expect("the default exchange's implicit binding")["properties_key"], "cq");
    let list = call(&s, "GET", "/api/bindings/%2F/e/ex1/q/cq", None).await.json();
    let keys: Vec<&str> =
        list.as_array().unwrap().iter().filter_map(|b| b["properties_key"].as_str()).collect();
    assert!(keys.contains(&"k1") && keys.contains(&"~") && keys.contains(&"a+b%7Ec%2Fd"), "{keys:?}");
    assert_eq!(
        call(&s, "GET", "/api/queues/%2F/cq/bindings", None).await.json().as_array().unwrap().len(),
        5
    );
    assert_eq!(
        call(&s, "GET", "/api/exchanges/%2F/ex1/bindings/source", None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // The binding routes, then goes away by its key.
    r.publish(1, "ex1", "k1", false, &[], b"routed").await;
    assert_eq!(r.counts(1, "cq").await.0, 1);
    assert_eq!(call(&s, "DELETE", "/api/bindings/%2F/e/ex1/q/cq/k1", None).await.status, 204);
    assert_eq!(call(&s, "GET", "/api/bindings/%2F/e/ex1/q/cq/k1", None).await.status, 404);
    r.publish(1, "ex1", "k1", false, &[], b"unrouted").await;
    assert_eq!(r.counts(1, "cq").await.0, 1);

    let missing = call(&s, "POST", "/api/bindings/%2F/e/nosuch/q/cq", Some(json!({}))).await;
    assert_eq!(
        (missing.status, missing.json()),
        (404, json!({"error": "not_found", "reason": "no exchange 'nosuch' in vhost '/'"}))
    );
    let default_src = call(&s, "POST", "/api/bindings/%2F/e/amq.default/q/cq", Some(json!({}))).await;
    assert_eq!(
        (default_src.status, default_src.json()),
        (401, json!({"error": "not_authorised", "reason": "Access refused."}))
    );
}

#[tokio::test]
async fn publish_and_get_messages_over_http() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::qdecl("hq", false, true, false, false, Default::default())).await;
    let body = json!({"properties": {"delivery_mode": 2, "headers": {"h": "v"}, "content_type": "text/plain"},
                      "routing_key": "hq", "payload": "hello from http", "payload_encoding": "string"});
    let p = call(&s, "POST", "/api/exchanges/%2F/amq.default/publish", Some(body)).await;
    assert_eq!((p.status, p.json()), (200, json!({"routed": true})));
    let nowhere =
        json!({"properties": {}, "routing_key": "nobody", "payload": "x", "payload_encoding": "string"});
    assert_eq!(
        call(&s, "POST", "/api/exchanges/%2F/amq.default/publish", Some(nowhere)).await.json(),
        json!({"routed": false})
    );
    let b64 = json!({"properties": {}, "routing_key": "hq", "payload": "//4=", "payload_encoding": "base64"});
    assert_eq!(
        call(&s, "POST", "/api/exchanges/%2F/amq.default/publish", Some(b64)).await.json()["routed"],
        true
    );

    // Peek with requeue: both stay, now redelivered.
    let got = call(
        &s,
        "POST",
        "/api/queues/%2F/hq/get",
        Some(json!({"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 50000})),
    )
    .await;
    assert_eq!(got.status, 200);
    let msgs = got.json();
    assert_eq!(msgs.as_array().map(|a| a.len()), Some(2));
    assert_eq!(msgs[0]["payload"], "hello from http");
    assert_eq!(msgs[0]["payload_encoding"], "string");
    assert_eq!(msgs[0]["payload_bytes"], 15);
    assert_eq!(msgs[0]["redelivered"], false);
    assert_eq!(msgs[0]["exchange"], "");
    assert_eq!(msgs[0]["routing_key"], "hq");
    assert_eq!(msgs[0]["message_count"], 1);
    assert_eq!(
        msgs[0]["properties"],
        json!({"content_type": "text/plain", "headers": {"h": "v"}, "delivery_mode": 2})
    );
    assert_eq!(
        (msgs[1]["payload"].clone(), msgs[1]["payload_encoding"].clone()),
        (json!("//4="), json!("base64")),
        "auto: a payload that is not UTF-8 comes back base64"
    );
    assert_eq!(r.counts(1, "hq").await.0, 2);
    // Then take them for good.
    let got = call(
        &s,
        "POST",
        "/api/queues/%2F/hq/get",
        Some(json!({"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"})),
    )
    .await
    .json();
    assert_eq!(got[0]["redelivered"], true);
    assert_eq!(r.counts(1, "hq").await.0, 0);
    // The overview sums the queues' delivery counters: 2 peeked + 2 taken, 2 acked.
    let o = call(&s, "GET", "/api/overview", None).await.json();
    assert_eq!(
        (o["message_stats"]["deliver_get"].clone(), o["message_stats"]["ack"].clone()),
        (json!(4), json!(2))
    );
    let bad = call(&s, "POST", "/api/queues/%2F/hq/get", Some(json!({"count": 1}))).await;
    assert_eq!(
        (bad.status, bad.json()["reason"].clone()),
        (400, json!("[{key_missing,ackmode},{key_missing,encoding}]"))
    );
}

#[tokio::test]
async fn a_rabbitmq_export_imports_and_exports_round_trip() {
    let s = start().await;
    let mut doc = sample("api-definitions-trimmed.json");
    // The trimmed sample's bindings point at exclusive queues it does not
    // carry; bind to what it does carry instead.
    let q = doc["queues"][2]["name"].as_str().expect("queue name").to_string();
    let x = doc["exchanges"][1]["name"].as_str().expect("exchange name").to_string();
    doc["bindings"] = json!([{"source": x, "vhost": "/", "destination": q, "destination_type": "queue", "routing_key": "rk", "arguments": {}}]);
    let mut imported = doc["users"][0].clone();
    imported["name"] = json!("imported");
    doc["users"].as_array_mut().unwrap().push(imported);
    doc["vhosts"].as_array_mut().unwrap().push(json!({"name": "second"}));
    doc["permissions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"user": "imported", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}));
    doc["policies"] = json!([{"vhost": "/", "name": "p1", "pattern": "^test\\.", "apply-to": "queues", "definition": {"max-length": 9}, "priority": 0}]);
    let r = call(&s, "POST", "/api/definitions", Some(doc.clone())).await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));

    // RabbitMQ's password hash works: the copied user logs in with guest's password.
    let mut c = Raw::open_as(s.addr(), "imported", "guest", "/").await;
    assert!(matches!(
        c.recv().await,
        In::Method(
            0,
            amq_protocol::protocol::AMQPClass::Connection(
                amq_protocol::protocol::connection::AMQPMethod::OpenOk(_)
            )
        )
    ));
    let v = s.broker().vhost("/").unwrap();
    let queue = v.queue(&q).expect("imported queue");
    assert_eq!(queue.args().message_ttl, Some(300));
    assert_eq!(queue.args().max_length, Some(9), "the imported policy applies");
    assert!(s.broker().vhost("second").is_some());

    let out = call(&s, "GET", "/api/definitions", None).await.json();
    assert_keys("definitions", &sample("api-definitions-trimmed.json"), &out);
    for key in ["queues", "exchanges", "bindings", "users", "permissions"] {
        for item in doc[key].as_array().unwrap() {
            let name_of = |i: &Value| {
                (i["name"].clone(), i["source"].clone(), i["destination"].clone(), i["user"].clone())
            };
            let found = out[key].as_array().unwrap().iter().find(|o| name_of(o) == name_of(item));
            let found = found.unwrap_or_else(|| panic!("{key}: {item} not exported"));
            assert_keys(key, item, found);
        }
    }
    assert!(
        out["exchanges"].as_array().unwrap().iter().all(|x| !x["name"].as_str().unwrap().starts_with("amq."))
    );
    assert!(out["bindings"].as_array().unwrap().iter().all(|b| b["source"] != ""));
    let one = call(&s, "GET", "/api/definitions/%2F", None).await.json();
    assert!(one.get("users").is_none() && one["queues"][0].get("vhost").is_none(), "per-vhost export: {one}");
}

#[tokio::test]
async fn lists_paginate_and_select_columns_like_rabbitmq() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    for i in 0..5 {
        r.declare(1, &format!("page-{i}")).await;
    }
    let paged =
        call(&s, "GET", "/api/queues?page=1&page_size=2&columns=name,messages,consumers", None).await.json();
    let want = sample("api-queues-paged-columns.json");
    for k in ["filtered_count", "item_count", "items", "page", "page_count", "page_size", "total_count"] {
        assert!(paged.get(k).is_some(), "{k} missing: {paged}");
    }
    assert_eq!(
        (paged["total_count"].clone(), paged["page_count"].clone(), paged["item_count"].clone()),
        (json!(5), json!(3), json!(2))
    );
    let item = paged["items"][0].as_object().expect("item");
    let mut keys: Vec<&String> = item.keys().collect();
    keys.sort();
    let mut want_keys: Vec<&String> = want["items"][0].as_object().unwrap().keys().collect();
    want_keys.sort();
    assert_eq!(keys, want_keys);
    assert_eq!(paged["items"][0]["name"], "page-0");
    let last = call(&s, "GET", "/api/queues?page=3&page_size=2", None).await.json();
    assert_eq!(last["items"][0]["name"], "page-4");
    let filtered = call(&s, "GET", "/api/queues?page=1&name=page-[13]&use_regex=true", None).await.json();
    assert_eq!(filtered["filtered_count"], 2);
    let rev = call(&s, "GET", "/api/queues?sort=name&sort_reverse=true&columns=name", None).await.json();
    assert_eq!(rev[0], json!({"name": "page-4"}));
}

#[tokio::test]
async fn nodes_extensions_and_aliveness() {
    let s = start().await;
    let nodes = call(&s, "GET", "/api/nodes", None).await.json();
    let want = sample("api-nodes-item-trimmed.json");
    let want = if want.is_array() { want[0].clone() } else { want };
    for k in [
        "name",
        "type",
        "running",
        "mem_used",
        "mem_limit",
        "mem_alarm",
        "disk_free",
        "disk_free_limit",
        "disk_free_alarm",
        "fd_used",
        "fd_total",
        "sockets_used",
        "sockets_total",
        "uptime",
        "processors",
        "exchange_types",
        "auth_mechanisms",
    ] {
        let (w, g) = (&want[k], &nodes[0][k]);
        assert!(std::mem::discriminant(w) == std::mem::discriminant(g), "nodes.{k}: {w} vs {g}");
    }
    assert!(nodes[0]["mem_used"].as_u64().unwrap() > 0, "RSS read from /proc");
    assert!(nodes[0]["disk_free"].as_u64().unwrap() > 0, "statvfs of the data dir");
    let name = nodes[0]["name"].as_str().unwrap().to_string();
    assert_eq!(call(&s, "GET", &format!("/api/nodes/{name}"), None).await.status, 200);
    assert_eq!(call(&s, "GET", "/api/nodes/nope", None).await.status, 404);
    assert_eq!(call(&s, "GET", "/api/aliveness-test/%2F", None).await.json(), json!({"status": "ok"}));
    assert!(call(&s, "GET", "/api/extensions", None).await.json().is_array());
    let ui = http(mgmt(&s), "GET", "/", None, None).await;
    assert_eq!(ui.status, 200);
    assert!(String::from_utf8_lossy(&ui.body).contains("<html"), "the web UI is served at /");
}

#[tokio::test]
async fn load_definitions_at_boot_creates_what_the_file_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("defs.json");
    let doc = json!({
        "users": [{"name": "svc", "password_hash": sample("api-definitions-trimmed.json")["users"][0]["password_hash"],
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["management"]}],
        "vhosts": [{"name": "/"}, {"name": "jobs"}],
        "permissions": [{"user": "svc", "vhost": "jobs", "configure": ".*", "write": ".*", "read": ".*"}],
        "policies": [{"vhost": "jobs", "name": "ttl", "pattern": ".*", "apply-to": "queues", "definition": {"message-ttl": 60000}, "priority": 0}],
        "exchanges": [{"name": "work", "vhost": "jobs", "type": "direct", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}],
        "queues": [{"name": "tasks", "vhost": "jobs", "durable": true, "auto_delete": false, "arguments": {"x-max-priority": 5}}],
        "bindings": [{"source": "work", "vhost": "jobs", "destination": "tasks", "destination_type": "queue", "routing_key": "t", "arguments": {}}]
    });
    std::fs::write(&file, doc.to_string()).expect("write");
    let path = file.display().to_string();
    let s = start_with(|c| c.storage.load_definitions = path.clone()).await;
    let v = s.broker().vhost("jobs").expect("vhost from the file");
    let q = v.queue("tasks").expect("queue from the file");
    assert_eq!(q.declared.max_priority, Some(5));
    assert_eq!(q.args().message_ttl, Some(60000), "the file's policy applies");
    assert_eq!(v.exchange("work").expect("exchange").bindings().len(), 1);
    // The exported hash is guest's: svc logs in with "guest".
    let mut r = Raw::open_as(s.addr(), "svc", "guest", "jobs").await;
    assert!(matches!(
        r.recv().await,
        In::Method(
            0,
            amq_protocol::protocol::AMQPClass::Connection(
                amq_protocol::protocol::connection::AMQPMethod::OpenOk(_)
            )
        )
    ));

    // A file that is not JSON stops startup with an error naming it.
    std::fs::write(&file, "{not json").expect("write");
    let mut cfg = test_config(dir.path());
    cfg.storage.load_definitions = path.clone();
    let err = warren::start(cfg).await.err().expect("startup refused");
    assert!(err.to_string().contains(&path), "{err}");
}

#[tokio::test]
async fn small_endpoints_match_their_rabbitmq_samples() {
    let s = start().await;
    let _ = Raw::open(s.addr()).await; // one AMQP login
    let bad = Raw::login(s.addr(), "guest", "wrong", &["authentication_failure_close"]).await; // one failed AMQP login
    drop(bad);
    let node = call(&s, "GET", "/api/nodes", None).await.json()[0]["name"].as_str().unwrap().to_string();
    assert_keys(
        "cluster-name",
        &sample("api-cluster-name.json"),
        &call(&s, "GET", "/api/cluster-name", None).await.json(),
    );
    let flags = call(&s, "GET", "/api/feature-flags", None).await.json();
    assert_keys("feature flag", &sample("api-feature-flags-sample.json")[0], &flags[0]);
    let globals = call(&s, "GET", "/api/global-parameters", None).await.json();
    assert_keys("global parameter", &sample("api-global-parameters.json")[0], &globals[0]);
    assert!(call(&s, "GET", "/api/extensions", None).await.json().is_array());
    let attempts = eventually_attempts(&s, &node).await;
    assert_keys("auth attempts", &sample("api-auth-attempts.json")[0], &attempts[0]);
    let amqp =
        attempts.as_array().unwrap().iter().find(|a| a["protocol"] == "amqp091").expect("amqp091").clone();
    assert_eq!(
        (amqp["auth_attempts_succeeded"].clone(), amqp["auth_attempts_failed"].clone()),
        (json!(1), json!(1))
    );
    let checks = sample("api-health-checks.json");
    let port = s.addr().port();
    for (path, key) in [
        ("/api/health/checks/alarms".to_string(), "GET /api/health/checks/alarms -> 200"),
        ("/api/health/checks/local-alarms".to_string(), "GET /api/health/checks/local-alarms -> 200"),
        ("/api/health/checks/virtual-hosts".to_string(), "GET /api/health/checks/virtual-hosts -> 200"),
        (
            format!("/api/health/checks/port-listener/{port}"),
            "GET /api/health/checks/port-listener/5672 -> 200",
        ),
        (
            "/api/health/checks/protocol-listener/amqp".to_string(),
            "GET /api/health/checks/protocol-listener/amqp -> 200",
        ),
        (
            "/api/health/checks/node-is-quorum-critical".to_string(),
            "GET /api/health/checks/node-is-quorum-critical -> 200",
        ),
        (
            "/api/health/checks/certificate-expiration/1/months".to_string(),
            "GET /api/health/checks/certificate-expiration/1/months -> 200",
        ),
    ] {
        let r = call(&s, "GET", &path, None).await;
        assert_eq!(r.status, 200, "{path}");
        assert_keys(&path, &checks[key], &r.json());
    }
    // A priority queue's detail, against RabbitMQ's.
    let mut r = Raw::open(s.addr()).await;
    let prio = table(&[("x-max-priority", amq_protocol::types::AMQPValue::LongInt(10))]);
    r.call(1, m::qdecl("prio-q", false, true, false, false, prio)).await;
    let detail = call(&s, "GET", "/api/queues/%2F/prio-q", None).await.json();
    let want = sample("api-queue-detail-priority.json");
    for k in want.as_object().unwrap().keys() {
        assert!(detail.get(k).is_some(), "queue detail lacks {k}");
    }
    assert_eq!(detail["arguments"]["x-max-priority"], 10);
}

/// The failed login is counted when its handshake ends; poll for it.
async fn eventually_attempts(s: &TestServer, node: &str) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let v = call(s, "GET", &format!("/api/auth/attempts/{node}"), None).await.json();
        let failed = v
            .as_array()
            .and_then(|a| a.iter().find(|x| x["protocol"] == "amqp091"))
            .map(|x| x["auth_attempts_failed"].clone());
        if failed == Some(json!(1)) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "failed AMQP login never counted: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
