//! Connection-level behaviour over raw sockets: protocol header, start/tune/open,
//! authentication, heartbeats, close handshakes, frame errors, limits.

use crate::common;

use amq_protocol::protocol::{AMQPClass, basic, channel, connection, queue};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use common::*;
use std::time::Duration;
use warren::protocol::frame;

fn tune_ok(channel_max: u16, frame_max: u32, heartbeat: u16) -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
        channel_max,
        frame_max,
        heartbeat,
    }))
}

fn open_vhost(v: &str) -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open { virtual_host: v.into() }))
}

async fn expect_tune(r: &mut Raw) -> connection::Tune {
    match r.recv().await {
        In::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
        other => panic!("expected tune, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_protocol_header_gets_servers_header_and_close() {
    let s = start().await;
    for header in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"AMQP\x01\x01\x00\x0a", b"AMQP\x00\x00\x09\x00"] {
        let mut r = Raw::tcp(s.addr()).await;
        r.send(header).await;
        let got = r.read_raw(Duration::from_secs(5)).await;
        assert_eq!(&got[..], b"AMQP\x00\x00\x09\x01", "reply to {header:?}");
    }
    // The broker keeps serving.
    let mut ok = Raw::open(s.addr()).await;
    ok.declare(1, "still-alive").await;
}

#[tokio::test]
async fn start_advertises_rabbitmq_identity_and_capabilities() {
    let s = start().await;
    let mut r = Raw::tcp(s.addr()).await;
    r.send(frame::PROTOCOL_HEADER).await;
    let In::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(st))) = r.recv().await else {
        panic!("no start")
    };
    assert_eq!((st.version_major, st.version_minor), (0, 9));
    assert_eq!(st.mechanisms.as_bytes(), b"AMQPLAIN PLAIN");
    assert_eq!(st.locales.as_bytes(), b"en_US");
    let p = st.server_properties.inner();
    assert_eq!(p.get("product"), Some(&AMQPValue::LongString("RabbitMQ".into())));
    assert!(matches!(p.get("version"), Some(AMQPValue::LongString(v)) if v.as_bytes().starts_with(b"3.13")));
    assert!(
        p.contains_key("warren_version") && p.contains_key("information") && p.contains_key("cluster_name")
    );
    let Some(AMQPValue::FieldTable(caps)) = p.get("capabilities") else { panic!("no capabilities") };
    for c in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        assert_eq!(caps.inner().get(c), Some(&AMQPValue::Boolean(true)), "capability {c}");
    }
}

#[tokio::test]
async fn plain_and_amqplain_logins_and_tune_values() {
    let s = start().await;
    let mut r = Raw::login(s.addr(), "guest", "guest", &[]).await;
    let t = expect_tune(&mut r).await;
    assert_eq!((t.channel_max, t.frame_max, t.heartbeat), (2047, 131072, 60));

    // AMQPLAIN: a field table without its length prefix.
    let mut r = Raw::tcp(s.addr()).await;
    r.send(frame::PROTOCOL_HEADER).await;
    r.recv().await;
    let creds = table(&[
        ("LOGIN", AMQPValue::LongString("guest".into())),
        ("PASSWORD", AMQPValue::LongString("guest".into())),
    ]);
    let encoded =
        cookie_factory::gen_simple(amq_protocol::types::generation::gen_field_table(&creds), Vec::new())
            .unwrap();
    r.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "AMQPLAIN".into(),
            response: LongString::from(encoded[4..].to_vec()),
            locale: "en_US".into(),
        })),
    )
    .await;
    expect_tune(&mut r).await;
}

#[tokio::test]
async fn wrong_password_closes_403_only_with_capability() {
    let s = start().await;
    let mut r = Raw::login(s.addr(), "guest", "wrong", &["authentication_failure_close"]).await;
    let (code, text, _, _) = r.expect_connection_close().await;
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    // Without the capability: the socket is just closed.
    let mut r = Raw::login(s.addr(), "nobody", "x", &[]).await;
    assert!(r.try_recv(Duration::from_secs(5)).await.is_none(), "no frame without the capability");
    let mut ok = Raw::open(s.addr()).await;
    ok.declare(1, "").await;
}

#[tokio::test]
async fn unknown_mechanism_is_503() {
    let s = start().await;
    let mut r = Raw::tcp(s.addr()).await;
    r.send(frame::PROTOCOL_HEADER).await;
    r.recv().await;
    r.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "EXTERNAL".into(),
            response: LongString::from(Vec::new()),
            locale: "en_US".into(),
        })),
    )
    .await;
    let (code, text, _, _) = r.expect_connection_close().await;
    assert_eq!((code, text.as_str()), (503, "COMMAND_INVALID - unknown authentication mechanism 'EXTERNAL'"));
}

#[tokio::test]
async fn tune_ok_validation_is_530() {
    let s = start().await;
    let cases = [
        (
            tune_ok(2047, 0, 0),
            "NOT_ALLOWED - negotiated frame_max = 0 is higher than the maximum allowed value (131072)",
        ),
        (
            tune_ok(2047, 200000, 0),
            "NOT_ALLOWED - negotiated frame_max = 200000 is higher than the maximum allowed value (131072)",
        ),
        (
            tune_ok(2047, 1000, 0),
            "NOT_ALLOWED - negotiated frame_max = 1000 is lower than the minimum allowed value (4096)",
        ),
        (
            tune_ok(0, 131072, 0),
            "NOT_ALLOWED - negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)",
        ),
        (
            tune_ok(3000, 131072, 0),
            "NOT_ALLOWED - negotiated channel_max = 3000 is higher than the maximum allowed value (2047)",
        ),
    ];
    for (m, want) in cases {
        let mut r = Raw::login(s.addr(), "guest", "guest", &[]).await;
        expect_tune(&mut r).await;
        r.method(0, m).await;
        let (code, text, class, method) = r.expect_connection_close().await;
        assert_eq!((code, text.as_str(), class, method), (530, want, 10, 31));
    }
}

#[tokio::test]
async fn unknown_vhost_is_530() {
    let s = start().await;
    let mut r = Raw::login(s.addr(), "guest", "guest", &[]).await;
    expect_tune(&mut r).await;
    r.method(0, tune_ok(2047, 131072, 0)).await;
    r.method(0, open_vhost("nope")).await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!((code, text.as_str(), class, method), (530, "NOT_ALLOWED - vhost nope not found", 10, 40));
}

#[tokio::test]
async fn server_sends_heartbeats_and_drops_silent_clients() {
    let s = start().await;
    let mut r = Raw::login(s.addr(), "guest", "guest", &[]).await;
    expect_tune(&mut r).await;
    r.method(0, tune_ok(2047, 131072, 1)).await;
    r.method(0, open_vhost("/")).await;
    assert!(matches!(
        r.recv().await,
        In::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))
    ));
    // Heartbeat 1 s: the server sends one within ~0.5 s of silence.
    match r.try_recv(Duration::from_secs(3)).await {
        Some(In::Heartbeat) => {}
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    // We send nothing back: after two missed intervals the socket is closed.
    assert!(r.closed_within(Duration::from_secs(6)).await, "silent client must be dropped");
}

#[tokio::test]
async fn client_heartbeats_keep_connection_alive() {
    let s = start().await;
    let mut r = Raw::login(s.addr(), "guest", "guest", &[]).await;
    expect_tune(&mut r).await;
    r.method(0, tune_ok(2047, 131072, 1)).await;
    r.method(0, open_vhost("/")).await;
    r.recv().await;
    let hb = raw_frame(frame::FRAME_HEARTBEAT, 0, b"", frame::FRAME_END);
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    while tokio::time::Instant::now() < until {
        r.send(&hb).await;
        let _ = r.try_recv(Duration::from_millis(400)).await;
    }
    r.open_channel(1).await; // still open after > 2 intervals
}

#[tokio::test]
async fn handshake_timeout_closes_socket() {
    let s = start_with(|c| c.amqp.handshake_timeout_ms = 300).await;
    let mut r = Raw::tcp(s.addr()).await;
    r.send(frame::PROTOCOL_HEADER).await;
    r.recv().await; // start; we never answer
    assert!(r.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn close_handshake_both_directions() {
    let s = start().await;
    // Client-initiated.
    let mut r = Raw::open(s.addr()).await;
    let reply = r
        .call(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
        .await;
    assert!(matches!(reply, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))));
    // As RabbitMQ: after close-ok the broker waits for the client to close
    // the socket, then closes its side.
    assert!(!r.closed_within(Duration::from_millis(300)).await, "the broker closed its side first");
    tokio::io::AsyncWriteExt::shutdown(&mut r.sock).await.unwrap();
    assert!(r.closed_within(Duration::from_secs(5)).await);
    // Server-initiated (a hard error): close, we answer close-ok, and the
    // broker closes the socket at once (RabbitMQ's reader terminates).
    let mut r = Raw::open(s.addr()).await;
    r.method(1, m::flow(false)).await;
    let (code, _, _, _) = r.expect_connection_close().await;
    assert_eq!(code, 540);
    assert!(r.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn frames_after_the_close_handshake_are_read_and_dropped() {
    // amqplib writes publishes it had buffered after its connection.close.
    // RabbitMQ keeps reading (and dropping) them until the client closes its
    // socket; closing at once makes the kernel answer them with a reset, and
    // the client gets EPIPE instead of a clean close.
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "after-close").await;
    let reply = r
        .call(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
        .await;
    assert!(matches!(reply, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))));
    for _ in 0..50 {
        // Each write must succeed: a reset would fail the second one.
        r.send_to(1, "after-close", &[7u8; 2000]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // None of them was taken as a publish.
    let mut other = Raw::open(s.addr()).await;
    let ok = other.call(1, m::qdecl("after-close", true, false, false, false, FieldTable::default())).await;
    let AMQPClass::Queue(queue::AMQPMethod::DeclareOk(d)) = ok else { panic!("{ok:?}") };
    assert_eq!(d.message_count, 0);
    // As RabbitMQ, the broker does not close its side of a connection the
    // client asked to close: it waits for the client to close first.
    assert!(!r.closed_within(Duration::from_millis(300)).await, "the broker closed its side first");
    tokio::io::AsyncWriteExt::shutdown(&mut r.sock).await.unwrap();
    assert!(r.closed_within(Duration::from_secs(5)).await, "the broker closes once the client has");
}

#[tokio::test]
async fn the_default_listener_takes_ipv4_and_ipv6_clients() {
    // "::" is the default bind, as RabbitMQ's: one socket for both
    // families. An IPv4 client arrives as ::ffff:127.0.0.1 and must still
    // count as loopback (guest) and show as 127.0.0.1.
    let s = start_with(|c| c.amqp.bind = "::".into()).await;
    let port = s.addr().port();
    let mut v4 = Raw::open(([127, 0, 0, 1], port).into()).await;
    v4.declare(1, "dual-stack").await;
    let mut expected = vec!["127.0.0.1".to_string()];
    let v6_addr: std::net::SocketAddr = (std::net::Ipv6Addr::LOCALHOST, port).into();
    let _v6 = match tokio::net::TcpStream::connect(v6_addr).await {
        Ok(_) => {
            expected.push("::1".to_string());
            let mut r = Raw::open(v6_addr).await;
            r.declare(1, "dual-stack").await;
            Some(r)
        }
        // A host without IPv6 (the listener then falls back to 0.0.0.0).
        Err(e) => {
            eprintln!("no ::1 here ({e}); only the IPv4 half is checked");
            None
        }
    };
    let mut peers: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while peers.len() < expected.len() {
        let r = http(mgmt(&s), "GET", "/api/connections", Some(("guest", "guest")), None).await;
        peers = r
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["peer_host"].as_str().unwrap().to_string())
            .collect();
        assert!(tokio::time::Instant::now() < deadline, "connections: {peers:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peers.sort();
    expected.sort();
    assert_eq!(peers, expected);
}

#[tokio::test]
async fn update_secret_is_acknowledged() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    let reply = r
        .call(
            0,
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(connection::UpdateSecret {
                new_secret: LongString::from(b"guest".to_vec()),
                reason: "rotation".into(),
            })),
        )
        .await;
    assert!(matches!(reply, AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(_))));
}

#[tokio::test]
async fn channel_open_close_flow_and_channel_max() {
    let s = start().await;
    let mut r = Raw::login(s.addr(), "guest", "guest", &[]).await;
    expect_tune(&mut r).await;
    r.method(0, tune_ok(2, 131072, 0)).await;
    r.method(0, open_vhost("/")).await;
    r.recv().await;
    r.open_channel(1).await;
    let reply = r.call(1, m::flow(true)).await;
    assert!(matches!(reply, AMQPClass::Channel(channel::AMQPMethod::FlowOk(f)) if f.active));
    let reply = r.call(1, m::ch_close()).await;
    assert!(matches!(reply, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))));
    r.open_channel(1).await; // reopen after close
    // channel_max bounds the number of open channels, not their numbers.
    r.open_channel(65535).await;
    r.method(3, AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))).await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!(code, 530);
    assert_eq!(
        text,
        "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"
    );
    assert_eq!((class, method), (20, 10));
}

#[tokio::test]
async fn channel_errors_504_for_unopened_and_second_open() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.method(5, m::q("x")).await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (504, "CHANNEL_ERROR - expected 'channel.open'", 50, 10)
    );
    let mut r = Raw::open(s.addr()).await;
    r.method(1, AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))).await;
    let (code, text, _, _) = r.expect_connection_close().await;
    assert_eq!((code, text.as_str()), (504, "CHANNEL_ERROR - second 'channel.open' seen"));
}

#[tokio::test]
async fn oversized_frame_is_501() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    // Declare the size only: refused from the 7-byte header alone.
    let mut f = vec![frame::FRAME_BODY, 0, 1];
    f.extend_from_slice(&132072u32.to_be_bytes());
    r.send(&f).await;
    let (code, text, _, _) = r.expect_connection_close().await;
    assert_eq!(code, 501);
    assert!(text.contains("{frame_too_large,132072,131064}"), "{text}");
    let mut ok = Raw::open(s.addr()).await;
    ok.declare(1, "").await;
}

#[tokio::test]
async fn bad_frame_end_is_501() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.send(&raw_frame(frame::FRAME_HEARTBEAT, 0, b"", 0x00)).await;
    let (code, text, _, _) = r.expect_connection_close().await;
    assert_eq!(code, 501);
    assert_eq!(text, "FRAME_ERROR - type 8, all octets = <<>>: {invalid_frame_end_marker,0}");
    // The octets of the payload are printed as RabbitMQ prints them.
    let mut r = Raw::open(s.addr()).await;
    r.send(&raw_frame(frame::FRAME_METHOD, 1, &[0, 60, 0, 40], 0xAB)).await;
    let (code, text, _, _) = r.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (501, "FRAME_ERROR - type 1, all octets = <<0,60,0,40>>: {invalid_frame_end_marker,171}")
    );
}

/// RabbitMQ lets a frame's payload run to `frame_max` itself, 8 octets past
/// the limit, because "quite a few [clients] get it wrong" (off by the frame
/// overhead); one octet more is refused.
#[tokio::test]
async fn payload_up_to_frame_max_is_accepted() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "fudge").await;
    let body = vec![7u8; 131072];
    let mut out = publish_method(1, "fudge");
    frame::encode_content_header(&mut out, 1, body.len() as u64, &[0, 0]);
    r.send(&out).await;
    r.send(&raw_frame(frame::FRAME_BODY, 1, &body, frame::FRAME_END)).await;
    assert_eq!(r.counts(1, "fudge").await.0, 1);
    // One octet more is refused from the 7-octet frame header alone.
    r.send(&raw_frame(frame::FRAME_BODY, 1, &[0u8; 131073], frame::FRAME_END)[..7]).await;
    let (code, text, _, _) = r.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (501, "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,131073,131064}")
    );
}

#[tokio::test]
async fn unknown_frame_type_and_method_and_truncated_args() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.send(&raw_frame(9, 1, b"xx", frame::FRAME_END)).await;
    let (code, text, _, _) = r.expect_connection_close().await;
    assert_eq!((code, text.as_str()), (501, "FRAME_ERROR - type 9, all octets = <<\"xx\">>: unknown_frame"));

    // Payloads too short for their type are unknown frames too.
    for (kind, payload, text) in [
        (frame::FRAME_METHOD, &[0u8, 60][..], "FRAME_ERROR - type 1, all octets = <<0,60>>: unknown_frame"),
        (
            frame::FRAME_HEADER,
            &[0, 60, 0, 0][..],
            "FRAME_ERROR - type 2, all octets = <<0,60,0,0>>: unknown_frame",
        ),
        (frame::FRAME_HEARTBEAT, &b"hb"[..], "FRAME_ERROR - type 8, all octets = <<\"hb\">>: unknown_frame"),
    ] {
        let mut r = Raw::open(s.addr()).await;
        r.send(&raw_frame(kind, 0, payload, frame::FRAME_END)).await;
        let (code, got, _, _) = r.expect_connection_close().await;
        assert_eq!((code, got.as_str()), (501, text));
    }

    let mut r = Raw::open(s.addr()).await;
    r.send(&raw_frame(frame::FRAME_METHOD, 1, &[0x03, 0xE7, 0, 10], frame::FRAME_END)).await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!((code, class, method), (503, 999, 10));
    assert_eq!(text, "COMMAND_INVALID - unknown method: class 999, method 10");

    let mut r = Raw::open(s.addr()).await;
    r.send(&raw_frame(frame::FRAME_METHOD, 1, &[0, 60, 3, 231], frame::FRAME_END)).await;
    let (code, _, class, method) = r.expect_connection_close().await;
    assert_eq!((code, class, method), (503, 60, 999));

    // queue.declare cut short: cannot decode → 501.
    let mut r = Raw::open(s.addr()).await;
    r.send(&raw_frame(frame::FRAME_METHOD, 1, &[0, 50, 0, 10, 0, 0, 5, b'a'], frame::FRAME_END)).await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (501, "FRAME_ERROR - cannot decode <<0,0,5,97>>", 50, 10)
    );
    // The same for the hand-parsed basic.publish.
    let mut r = Raw::open(s.addr()).await;
    r.send(&raw_frame(frame::FRAME_METHOD, 1, &[0, 60, 0, 40, 0, 0, 255, b'a'], frame::FRAME_END)).await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (501, "FRAME_ERROR - cannot decode <<0,0,255,97>>", 60, 40)
    );
    let mut ok = Raw::open(s.addr()).await;
    ok.declare(1, "").await;
}

#[tokio::test]
async fn content_without_publish_is_505() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.send(&raw_frame(frame::FRAME_BODY, 1, b"orphan body", frame::FRAME_END)).await;
    let (code, text, _, _) = r.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (505, "UNEXPECTED_FRAME - expected method frame, got non method frame instead")
    );

    // A method where the content header belongs.
    let mut r = Raw::open(s.addr()).await;
    let out = publish_method(1, "q");
    r.send(&out).await;
    r.method(1, m::q("q")).await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!(code, 505);
    assert_eq!(
        text,
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead"
    );
    assert_eq!((class, method), (60, 40));

    // A heartbeat on a non-zero channel.
    let mut r = Raw::open(s.addr()).await;
    r.send(&raw_frame(frame::FRAME_HEARTBEAT, 1, b"", frame::FRAME_END)).await;
    let (code, text, _, _) = r.expect_connection_close().await;
    assert_eq!((code, text.as_str()), (505, "UNEXPECTED_FRAME - type 8, all octets = <<>>"));

    // A content frame on channel 0.
    let mut r = Raw::open(s.addr()).await;
    r.send(&raw_frame(frame::FRAME_BODY, 0, b"body", frame::FRAME_END)).await;
    let (code, text, _, _) = r.expect_connection_close().await;
    assert_eq!((code, text.as_str()), (505, "UNEXPECTED_FRAME - type 3, all octets = <<\"body\">>"));

    // A method where the next body frame belongs.
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "q").await;
    let mut out = publish_method(1, "q");
    frame::encode_content_header(&mut out, 1, 10, &[0, 0]);
    out.extend_from_slice(&raw_frame(frame::FRAME_BODY, 1, b"12345", frame::FRAME_END));
    r.send(&out).await;
    r.method(1, m::q("q")).await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (505, "UNEXPECTED_FRAME - expected content body, got non content body frame instead", 60, 40)
    );
}

/// A body longer than its header announced: RabbitMQ's assembler waits for
/// a remaining size that never comes, so the message is not published, later
/// body frames are taken, and the next other frame on the channel is a 505.
#[tokio::test]
async fn body_longer_than_its_header_is_505_on_the_next_frame() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "long").await;
    r.open_channel(2).await;
    let mut out = publish_method(1, "long");
    frame::encode_content_header(&mut out, 1, 2, &[0, 0]);
    out.extend_from_slice(&raw_frame(frame::FRAME_BODY, 1, b"abcd", frame::FRAME_END));
    out.extend_from_slice(&raw_frame(frame::FRAME_BODY, 1, b"more", frame::FRAME_END));
    r.send(&out).await;
    // The connection is still open, and the message went nowhere.
    assert_eq!(r.counts(2, "long").await.0, 0);
    r.method(1, m::q("long")).await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (505, "UNEXPECTED_FRAME - expected content body, got non content body frame instead", 60, 40)
    );
}

/// Methods RabbitMQ's channel has no handler for: connection methods on a
/// channel, close-ok on an open channel, flow-ok, methods only a server
/// sends. Each closes the connection with 503 `unimplemented method`.
#[tokio::test]
async fn methods_without_a_channel_handler_are_unimplemented() {
    let s = start().await;
    let cases: Vec<(AMQPClass, u16, u16)> = vec![
        (AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})), 10, 51),
        (AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})), 20, 41),
        (AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk { active: true })), 20, 21),
        (AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count: 0 })), 50, 31),
        (AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})), 60, 111),
    ];
    for (method, class_id, method_id) in cases {
        let mut r = Raw::open(s.addr()).await;
        r.method(1, method).await;
        let got = r.expect_connection_close().await;
        assert_eq!(got, (503, "COMMAND_INVALID - unimplemented method".to_string(), class_id, method_id));
    }
    let mut ok = Raw::open(s.addr()).await;
    ok.declare(1, "").await;
}

#[tokio::test]
async fn max_message_size_is_406_on_the_channel() {
    let s = start_with(|c| c.amqp.max_message_size = 1000).await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "big").await;
    r.send_to(1, "big", &[1u8; 1001]).await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!((code, class, method), (406, 60, 40));
    assert_eq!(text, "PRECONDITION_FAILED - message size 1001 is larger than configured max size 1000");
    r.open_channel(2).await;
    r.send_to(2, "big", &[1u8; 1000]).await;
    assert_eq!(r.counts(2, "big").await.0, 1);
}

#[tokio::test]
async fn one_thousand_connections_with_a_channel_each() {
    let s = start().await;
    let mut conns = Vec::new();
    for chunk in 0..20 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let addr = s.addr();
            set.spawn(async move { Raw::open(addr).await });
        }
        while let Some(r) = set.join_next().await {
            conns.push(r.expect("connection opens"));
        }
        assert_eq!(conns.len(), (chunk + 1) * 50);
    }
    eventually("1000 connections counted", Duration::from_secs(10), || {
        s.broker().counters.connections.load(std::sync::atomic::Ordering::Relaxed) == 1000
    })
    .await;
    // Every connection is served: declare on each.
    for (i, r) in conns.iter_mut().enumerate().step_by(1) {
        if i % 10 == 0 {
            r.declare(1, "").await;
        }
    }
    let first = &mut conns[0];
    first.declare(1, "shared").await;
    let last = conns.last_mut().expect("last");
    last.send_to(1, "shared", b"hi").await;
    let first = &mut conns[0];
    first.method(1, m::get("shared", true)).await;
    assert_eq!(first.next_message().await.body, b"hi");
}

/// Reads deferred for the connection whose client socket is `r`'s.
fn reads_deferred(s: &TestServer, r: &Raw) -> u64 {
    let me = r.sock.local_addr().expect("local address");
    s.broker()
        .registry
        .all()
        .iter()
        .find(|c| c.peer == me)
        .map(|c| c.reads_deferred.load(std::sync::atomic::Ordering::Relaxed))
        .expect("the connection is registered")
}

async fn publish_bodies(r: &mut Raw, q: &str, n: usize) {
    for i in 0..n {
        r.publish(1, "", q, false, &[], format!("m{i}").as_bytes()).await;
    }
}

#[tokio::test]
async fn read_coalescing_defers_only_connections_nobody_waits_on() {
    // A threshold of one byte: every read that does not fill the buffer is
    // big enough, so what the connection waits for alone decides.
    let s = start_with(|c| c.amqp.read_coalesce_bytes = 1).await;
    let mut p = Raw::open(s.addr()).await;
    p.call(1, m::qdecl("rc", false, false, false, false, FieldTable::default())).await;
    publish_bodies(&mut p, "rc", 300).await;
    // Deferred reads lose and reorder nothing.
    let mut g = Raw::open(s.addr()).await;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 300 {
        assert!(tokio::time::Instant::now() < deadline, "only {} of 300 arrived", got.len());
        g.method(1, m::get("rc", true)).await;
        let msg = g.next_message().await;
        if let AMQPClass::Basic(basic::AMQPMethod::GetOk(_)) = msg.method {
            got.push(String::from_utf8(msg.body).expect("utf-8"));
        }
    }
    assert_eq!(got, (0..300).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert!(reads_deferred(&s, &p) > 0, "a publisher without confirms streams with deferred reads");

    // A publisher that waits for confirms is never deferred.
    let mut c = Raw::open(s.addr()).await;
    c.call(1, m::confirm_select()).await;
    let before = reads_deferred(&s, &c);
    publish_bodies(&mut c, "rc", 300).await;
    let mut confirmed = 0;
    while confirmed < 300 {
        if let In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) = c.recv().await {
            confirmed = a.delivery_tag;
        }
    }
    assert_eq!(reads_deferred(&s, &c), before, "confirm mode");

    // Nor one in a transaction.
    let mut t = Raw::open(s.addr()).await;
    t.call(1, m::tx_select()).await;
    let before = reads_deferred(&s, &t);
    publish_bodies(&mut t, "rc", 100).await;
    t.call(1, m::tx_commit()).await;
    assert_eq!(reads_deferred(&s, &t), before, "transaction");

    // Nor one with a consumer that acks: its acks free the next deliveries.
    let mut k = Raw::open(s.addr()).await;
    k.call(1, m::qdecl("rk", false, false, false, false, FieldTable::default())).await;
    k.call(1, m::consume("rk", "tag", false, false, FieldTable::default())).await;
    let before = reads_deferred(&s, &k);
    publish_bodies(&mut k, "rk", 100).await;
    for i in 0..100 {
        let msg = k.next_message().await;
        assert_eq!(msg.body, format!("m{i}").as_bytes());
        k.method(1, m::ack(msg.delivery_tag(), false)).await;
    }
    assert_eq!(reads_deferred(&s, &k), before, "manual-ack consumer");
    s.stop().await;
}

/// A `basic.publish` method frame to the default exchange, without its
/// content: the tests add the header and body frames they need.
fn publish_method(channel: u16, key: &str) -> bytes::BytesMut {
    let mut out = bytes::BytesMut::new();
    frame::encode_method(
        &mut out,
        channel,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: key.into(),
            mandatory: false,
            immediate: false,
        })),
    );
    out
}

/// The state management shows for the connection whose client port is `port`.
async fn connection_state(s: &TestServer, port: u16) -> String {
    let r = http(mgmt(s), "GET", "/api/connections", GUEST, None).await;
    assert_eq!(r.status, 200);
    let all = r.json();
    let c = all
        .as_array()
        .and_then(|a| a.iter().find(|c| c["peer_port"] == port))
        .unwrap_or_else(|| panic!("no connection from port {port} in {all}"));
    c["state"].as_str().unwrap_or_else(|| panic!("no state in {c}")).to_string()
}

async fn until_state(s: &TestServer, port: u16, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = connection_state(s, port).await;
        if state == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "state still {state}, want {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Flow control (RabbitMQ's credit flow): while more pages than the flow
/// limit wait for the persister, a connection that publishes is not read
/// (management shows it in state "flow", with no `connection.blocked`); a
/// connection that only reads from queues goes on; when the pages are
/// written the publisher resumes, and "flow" clears a second later.
#[tokio::test]
async fn publishers_wait_in_flow_while_pages_wait_for_the_persister() {
    let s = start().await;
    let store = s.broker().store.messages.clone();
    let mut p = Raw::open(s.addr()).await;
    let p_port = p.sock.local_addr().expect("local addr").port();
    p.declare(1, "fq").await;
    let mut c = Raw::open(s.addr()).await;
    assert_eq!(connection_state(&s, p_port).await, "running");

    store.hold_pages(store.flow_limit());
    assert!(store.congested());
    // Routed, and after the read batch that carried it the reader waits.
    p.send_to(1, "fq", b"one").await;
    until_state(&s, p_port, "flow").await;
    assert_eq!(c.counts(1, "fq").await, (1, 0));
    // This one stays in the socket while the connection is in flow.
    p.send_to(1, "fq", b"two").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.counts(1, "fq").await, (1, 0), "a publish was read during flow");
    // The other connection consumes meanwhile.
    c.call(1, m::consume("fq", "c1", true, false, FieldTable::default())).await;
    assert_eq!(c.next_message().await.body, b"one");
    assert_eq!(connection_state(&s, p_port).await, "flow");

    store.release_pages(store.flow_limit());
    assert!(!store.congested());
    let second = c.next_message().await;
    assert_eq!(second.body, b"two");
    until_state(&s, p_port, "running").await;
    // Its channel is still usable.
    assert_eq!(p.counts(1, "fq").await, (0, 1));
}
