//! Test support: an in-process broker on 127.0.0.1:0 with a temp data dir,
//! a raw AMQP client for byte-exact protocol checks, and polling helpers.
#![allow(dead_code)]

use amq_protocol::protocol::{AMQPClass, basic, channel, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::{BufMut, Bytes, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::protocol::frame::{self, Frame};

pub struct TestServer {
    pub handle: Option<warren::ServerHandle>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub fn addr(&self) -> std::net::SocketAddr {
        self.handle.as_ref().expect("running").amqp_addr
    }
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr())
    }
    pub fn broker(&self) -> &warren::broker::Broker {
        &self.handle.as_ref().expect("running").broker
    }
    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

pub fn test_config(dir: &std::path::Path) -> warren::Config {
    let mut cfg = warren::Config::default();
    cfg.amqp.bind = "127.0.0.1".into();
    cfg.amqp.port = 0;
    cfg.management.bind = "127.0.0.1".into();
    cfg.management.port = 0;
    cfg.prometheus.bind = "127.0.0.1".into();
    cfg.prometheus.port = 0;
    cfg.storage.data_dir = dir.to_path_buf();
    cfg
}

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

pub async fn start_with(f: impl FnOnce(&mut warren::Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    f(&mut cfg);
    let handle = warren::start(cfg).await.expect("broker starts");
    TestServer { handle: Some(handle), dir }
}

/// Polls `f` until it returns true or the deadline passes.
pub async fn eventually<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval
    }
}

pub async fn lapin(server: &TestServer) -> lapin::Connection {
    lapin::Connection::connect(&server.uri(), lapin::ConnectionProperties::default())
        .await
        .expect("lapin connects")
}

/// A frame as the raw client sees it.
#[derive(Debug)]
pub enum In {
    Method(u16, AMQPClass),
    Header(u16, u64, Bytes),
    Body(u16, Bytes),
    Heartbeat,
}

/// A byte-level AMQP client: sends exactly what a test says, decodes replies.
pub struct Raw {
    pub sock: TcpStream,
    buf: BytesMut,
    /// Frames read while waiting for a synchronous reply (deliveries, confirms).
    pending: std::collections::VecDeque<In>,
    /// The server closed the socket (as opposed to a read timing out).
    pub eof: bool,
}

pub fn client_properties(caps: &[&str]) -> FieldTable {
    let mut c = FieldTable::default();
    for k in caps {
        c.insert((*k).into(), AMQPValue::Boolean(true));
    }
    let mut t = FieldTable::default();
    t.insert("capabilities".into(), AMQPValue::FieldTable(c));
    t.insert("product".into(), AMQPValue::LongString("raw-test".into()));
    t
}

impl Raw {
    pub async fn tcp(addr: std::net::SocketAddr) -> Raw {
        let sock = TcpStream::connect(addr).await.expect("tcp connect");
        sock.set_nodelay(true).ok();
        Raw { sock, buf: BytesMut::new(), pending: Default::default(), eof: false }
    }

    /// Full handshake as guest with the usual capabilities, then channel 1 open.
    pub async fn open(addr: std::net::SocketAddr) -> Raw {
        let mut r = Raw::open_as(addr, "guest", "guest", "/").await;
        assert!(matches!(
            r.recv().await,
            In::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))
        ));
        r.open_channel(1).await;
        r
    }

    /// Handshake up to and including `connection.open` of `vhost` as `user`;
    /// the caller reads the answer (open-ok or close).
    pub async fn open_as(addr: std::net::SocketAddr, user: &str, pass: &str, vhost: &str) -> Raw {
        Raw::open_with(
            addr,
            user,
            pass,
            vhost,
            &["consumer_cancel_notify", "authentication_failure_close", "publisher_confirms"],
        )
        .await
    }

    /// Full handshake as guest on "/" announcing `caps`, then channel 1 open.
    pub async fn open_caps(addr: std::net::SocketAddr, caps: &[&str]) -> Raw {
        let mut r = Raw::open_with(addr, "guest", "guest", "/", caps).await;
        assert!(matches!(
            r.recv().await,
            In::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))
        ));
        r.open_channel(1).await;
        r
    }

    /// `open_as` with the client capabilities to announce.
    pub async fn open_with(
        addr: std::net::SocketAddr,
        user: &str,
        pass: &str,
        vhost: &str,
        caps: &[&str],
    ) -> Raw {
        let mut r = Raw::login(addr, user, pass, caps).await;
        match r.recv().await {
            In::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(_))) => {}
            other => panic!("expected connection.tune, got {other:?}"),
        }
        r.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max: 131072,
                heartbeat: 0,
            })),
        )
        .await;
        r.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: vhost.into(),
            })),
        )
        .await;
        r
    }

    /// Sends the header and start-ok; returns after reading connection.start.
    /// The next frame is tune (or close on auth failure).
    pub async fn login(addr: std::net::SocketAddr, user: &str, pass: &str, caps: &[&str]) -> Raw {
        let mut r = Raw::tcp(addr).await;
        r.sock.write_all(frame::PROTOCOL_HEADER).await.unwrap();
        match r.recv().await {
            In::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(_))) => {}
            other => panic!("expected connection.start, got {other:?}"),
        }
        let mut resp = vec![0u8];
        resp.extend_from_slice(user.as_bytes());
        resp.push(0);
        resp.extend_from_slice(pass.as_bytes());
        r.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: client_properties(caps),
                mechanism: "PLAIN".into(),
                response: LongString::from(resp),
                locale: "en_US".into(),
            })),
        )
        .await;
        r
    }

    pub async fn open_channel(&mut self, ch: u16) {
        self.method(ch, AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))).await;
        match self.recv().await {
            In::Method(c, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) if c == ch => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.expect("write");
    }

    pub async fn method(&mut self, ch: u16, m: AMQPClass) {
        let mut out = BytesMut::new();
        frame::encode_method(&mut out, ch, &m);
        self.send(&out).await;
    }

    /// basic.publish + header + body frames.
    pub async fn publish(
        &mut self,
        ch: u16,
        exchange: &str,
        key: &str,
        mandatory: bool,
        props: &[u8],
        body: &[u8],
    ) {
        let mut out = BytesMut::new();
        frame::encode_method(
            &mut out,
            ch,
            &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: key.into(),
                mandatory,
                immediate: false,
            })),
        );
        let p = if props.is_empty() { &[0u8, 0][..] } else { props };
        frame::encode_content_header(&mut out, ch, body.len() as u64, p);
        if !body.is_empty() {
            frame::encode_body(&mut out, ch, body, 131072);
        }
        self.send(&out).await;
    }

    /// Next frame, or panic after 5 s / on EOF.
    pub async fn recv(&mut self) -> In {
        self.try_recv(Duration::from_secs(5)).await.expect("a frame before the deadline")
    }

    /// Next frame; `None` on EOF or timeout.
    pub async fn try_recv(&mut self, timeout: Duration) -> Option<In> {
        if let Some(f) = self.pending.pop_front() {
            return Some(f);
        }
        self.read_frame(timeout).await
    }

    async fn read_frame(&mut self, timeout: Duration) -> Option<In> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.buf.len() >= 8 && &self.buf[..4] == b"AMQP" {
                return None; // protocol header from the server: refused
            }
            if let Some(Frame { kind, channel, payload }) =
                frame::decode(&mut self.buf, 0).expect("server frames are valid")
            {
                return Some(match kind {
                    frame::FRAME_METHOD => {
                        let (_, m) =
                            amq_protocol::protocol::parse_class(&payload[..]).expect("server method decodes");
                        In::Method(channel, m)
                    }
                    frame::FRAME_HEADER => {
                        let size = u64::from_be_bytes(payload[4..12].try_into().unwrap());
                        In::Header(channel, size, payload.slice(12..))
                    }
                    frame::FRAME_BODY => In::Body(channel, payload),
                    _ => In::Heartbeat,
                });
            }
            match tokio::time::timeout_at(deadline, self.sock.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.eof = true;
                    return None;
                }
                Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Reads raw bytes until EOF or timeout (for refusal tests).
    pub async fn read_raw(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.sock.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return self.buf.to_vec(),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// True if the server closed the socket (EOF) within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut scratch = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.sock.read(&mut scratch)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    /// Skips frames until a channel.close on `ch`; returns (code, text, class, method).
    pub async fn expect_channel_close(&mut self, ch: u16) -> (u16, String, u16, u16) {
        loop {
            match self.recv().await {
                In::Method(c, AMQPClass::Channel(channel::AMQPMethod::Close(cl))) if c == ch => {
                    self.method(ch, AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})))
                        .await;
                    return (cl.reply_code, cl.reply_text.to_string(), cl.class_id, cl.method_id);
                }
                In::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(cl))) => {
                    panic!("expected channel.close, got connection.close {} {}", cl.reply_code, cl.reply_text)
                }
                _ => continue,
            }
        }
    }

    /// Skips frames until connection.close; answers close-ok.
    pub async fn expect_connection_close(&mut self) -> (u16, String, u16, u16) {
        loop {
            match self.recv().await {
                In::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(cl))) => {
                    self.method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                    )
                    .await;
                    return (cl.reply_code, cl.reply_text.to_string(), cl.class_id, cl.method_id);
                }
                In::Method(c, AMQPClass::Channel(channel::AMQPMethod::Close(cl))) => {
                    panic!(
                        "expected connection.close, got channel.close on {c}: {} {}",
                        cl.reply_code, cl.reply_text
                    )
                }
                _ => continue,
            }
        }
    }

    /// Sends a method and returns its synchronous reply (or a close). Frames
    /// that arrive meanwhile (deliveries with their content, confirms,
    /// server cancels) are kept for later `recv` calls.
    pub async fn call(&mut self, ch: u16, m: AMQPClass) -> AMQPClass {
        self.method(ch, m).await;
        let mut stash = Vec::new();
        let reply = loop {
            let f = self.read_frame(Duration::from_secs(5)).await.expect("a reply before the deadline");
            match f {
                In::Method(c, reply) if (c == ch || c == 0) && !is_async(&reply) => break reply,
                other => stash.push(other),
            }
        };
        self.pending.extend(stash);
        reply
    }
}

/// Methods the server sends on its own, not as a reply.
fn is_async(m: &AMQPClass) -> bool {
    matches!(
        m,
        AMQPClass::Basic(
            basic::AMQPMethod::Deliver(_)
                | basic::AMQPMethod::Return(_)
                | basic::AMQPMethod::Ack(_)
                | basic::AMQPMethod::Nack(_)
                | basic::AMQPMethod::Cancel(_)
        )
    )
}

/// Raw frame bytes with an arbitrary type/channel/payload/end octet.
pub fn raw_frame(kind: u8, ch: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(kind);
    b.put_u16(ch);
    b.put_u32(payload.len() as u32);
    b.extend_from_slice(payload);
    b.put_u8(end);
    b.to_vec()
}

// ---- method constructors (raw client) --------------------------------------
pub mod m {
    use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, exchange, queue, tx};
    use amq_protocol::types::FieldTable;

    pub fn qdecl(
        name: &str,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        args: FieldTable,
    ) -> AMQPClass {
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            passive,
            durable,
            exclusive,
            auto_delete,
            nowait: false,
            arguments: args,
        }))
    }
    pub fn q(name: &str) -> AMQPClass {
        qdecl(name, false, false, false, false, FieldTable::default())
    }
    pub fn qbind(q: &str, x: &str, key: &str, args: FieldTable) -> AMQPClass {
        AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: q.into(),
            exchange: x.into(),
            routing_key: key.into(),
            nowait: false,
            arguments: args,
        }))
    }
    pub fn qunbind(q: &str, x: &str, key: &str) -> AMQPClass {
        AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
            queue: q.into(),
            exchange: x.into(),
            routing_key: key.into(),
            arguments: FieldTable::default(),
        }))
    }
    pub fn qpurge(q: &str) -> AMQPClass {
        AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge { queue: q.into(), nowait: false }))
    }
    pub fn qdelete(q: &str, if_unused: bool, if_empty: bool) -> AMQPClass {
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: q.into(),
            if_unused,
            if_empty,
            nowait: false,
        }))
    }
    pub fn xdecl(
        name: &str,
        kind: &str,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        args: FieldTable,
    ) -> AMQPClass {
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: name.into(),
            kind: kind.into(),
            passive,
            durable,
            auto_delete,
            internal,
            nowait: false,
            arguments: args,
        }))
    }
    pub fn x(name: &str, kind: &str) -> AMQPClass {
        xdecl(name, kind, false, false, false, false, FieldTable::default())
    }
    pub fn xdelete(name: &str, if_unused: bool) -> AMQPClass {
        AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: name.into(),
            if_unused,
            nowait: false,
        }))
    }
    pub fn xbind(dest: &str, src: &str, key: &str) -> AMQPClass {
        AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
            destination: dest.into(),
            source: src.into(),
            routing_key: key.into(),
            nowait: false,
            arguments: FieldTable::default(),
        }))
    }
    pub fn xunbind(dest: &str, src: &str, key: &str) -> AMQPClass {
        AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
            destination: dest.into(),
            source: src.into(),
            routing_key: key.into(),
            nowait: false,
            arguments: FieldTable::default(),
        }))
    }
    pub fn consume(q: &str, tag: &str, no_ack: bool, exclusive: bool, args: FieldTable) -> AMQPClass {
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: q.into(),
            consumer_tag: tag.into(),
            no_local: false,
            no_ack,
            exclusive,
            nowait: false,
            arguments: args,
        }))
    }
    pub fn cancel(tag: &str) -> AMQPClass {
        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel { consumer_tag: tag.into(), nowait: false }))
    }
    pub fn get(q: &str, no_ack: bool) -> AMQPClass {
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get { queue: q.into(), no_ack }))
    }
    pub fn ack(tag: u64, multiple: bool) -> AMQPClass {
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack { delivery_tag: tag, multiple }))
    }
    pub fn nack(tag: u64, multiple: bool, requeue: bool) -> AMQPClass {
        AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack { delivery_tag: tag, multiple, requeue }))
    }
    pub fn reject(tag: u64, requeue: bool) -> AMQPClass {
        AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject { delivery_tag: tag, requeue }))
    }
    pub fn qos(count: u16, global: bool) -> AMQPClass {
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos { prefetch_count: count, global }))
    }
    pub fn recover(requeue: bool) -> AMQPClass {
        AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue }))
    }
    pub fn confirm_select() -> AMQPClass {
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select { nowait: false }))
    }
    pub fn tx_select() -> AMQPClass {
        AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {}))
    }
    pub fn tx_commit() -> AMQPClass {
        AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {}))
    }
    pub fn tx_rollback() -> AMQPClass {
        AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {}))
    }
    pub fn flow(active: bool) -> AMQPClass {
        AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active }))
    }
    pub fn ch_close_ok() -> AMQPClass {
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}))
    }
    pub fn ch_close() -> AMQPClass {
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }))
    }
}

/// A received message: (deliver-or-get method, properties, body).
#[derive(Debug)]
pub struct Msg {
    pub method: AMQPClass,
    pub props: Bytes,
    pub body: Vec<u8>,
}

impl Msg {
    pub fn delivery_tag(&self) -> u64 {
        match &self.method {
            AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => d.delivery_tag,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(g)) => g.delivery_tag,
            _ => 0,
        }
    }
    pub fn redelivered(&self) -> bool {
        match &self.method {
            AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => d.redelivered,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(g)) => g.redelivered,
            _ => false,
        }
    }
    pub fn consumer_tag(&self) -> String {
        match &self.method {
            AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => d.consumer_tag.to_string(),
            _ => String::new(),
        }
    }
}

impl Raw {
    /// Reads the next content-carrying method (deliver, get-ok, return) with its content.
    pub async fn next_message(&mut self) -> Msg {
        self.try_next_message(Duration::from_secs(5)).await.expect("a message before the deadline")
    }

    pub async fn try_next_message(&mut self, timeout: Duration) -> Option<Msg> {
        let method = loop {
            match self.try_recv(timeout).await? {
                In::Method(_, m @ AMQPClass::Basic(basic::AMQPMethod::Deliver(_)))
                | In::Method(_, m @ AMQPClass::Basic(basic::AMQPMethod::GetOk(_)))
                | In::Method(_, m @ AMQPClass::Basic(basic::AMQPMethod::Return(_))) => break m,
                In::Method(_, m @ AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))) => {
                    return Some(Msg { method: m, props: Bytes::new(), body: vec![] });
                }
                In::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(c))) => {
                    panic!("channel closed: {} {}", c.reply_code, c.reply_text)
                }
                _ => continue,
            }
        };
        let (size, props) = match self.recv().await {
            In::Header(_, size, props) => (size, props),
            other => panic!("expected content header, got {other:?}"),
        };
        let mut body = Vec::new();
        while (body.len() as u64) < size {
            match self.recv().await {
                In::Body(_, b) => body.extend_from_slice(&b),
                other => panic!("expected body, got {other:?}"),
            }
        }
        Some(Msg { method, props, body })
    }

    /// Publishes `body` to the default exchange → queue `q`.
    pub async fn send_to(&mut self, ch: u16, q: &str, body: &[u8]) {
        self.publish(ch, "", q, false, &[], body).await;
    }

    /// Declares a plain queue and waits for declare-ok.
    pub async fn declare(&mut self, ch: u16, name: &str) -> String {
        match self.call(ch, m::q(name)).await {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => ok.queue.to_string(),
            other => panic!("declare failed: {other:?}"),
        }
    }

    /// (message_count, consumer_count) of a queue via passive declare.
    pub async fn counts(&mut self, ch: u16, name: &str) -> (u32, u32) {
        match self.call(ch, m::qdecl(name, true, false, false, false, FieldTable::default())).await {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => (ok.message_count, ok.consumer_count),
            other => panic!("passive declare failed: {other:?}"),
        }
    }
}

use amq_protocol::protocol::queue;

pub fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// Encoded content properties for tests (via amq-protocol).
pub fn props(p: amq_protocol::protocol::basic::AMQPProperties) -> Vec<u8> {
    cookie_factory::gen_simple(amq_protocol::protocol::basic::gen_properties(&p), Vec::new())
        .expect("encode properties")
}

impl TestServer {
    /// Graceful stop, then a new broker on the same data directory.
    pub async fn restart(mut self) -> TestServer {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
        let cfg = test_config(self.dir.path());
        // The old broker's last references go with its tasks; sled's lock on
        // the directory is released when they do.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let handle = loop {
            match warren::start(cfg.clone()).await {
                Ok(h) => break h,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await; // retry until the deadline
                }
                Err(e) => panic!("broker restarts: {e}"),
            }
        };
        TestServer { handle: Some(handle), dir: self.dir }
    }
}

impl Raw {
    /// Writes bytes; false if the socket is gone (no panic, for crash tests).
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.sock.write_all(bytes).await.is_ok()
    }
}

/// Encodes a publish (method + header + body) into `out`.
pub fn encode_publish(out: &mut BytesMut, ch: u16, exchange: &str, key: &str, props: &[u8], body: &[u8]) {
    frame::encode_method(
        out,
        ch,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.into(),
            routing_key: key.into(),
            mandatory: false,
            immediate: false,
        })),
    );
    frame::encode_content_header(out, ch, body.len() as u64, props);
    if !body.is_empty() {
        frame::encode_body(out, ch, body, 131072);
    }
}

/// The real `warren` binary as a child process on ephemeral ports.
pub struct Child {
    pub process: std::process::Child,
    pub amqp: std::net::SocketAddr,
    /// The AMQPS listener (port 0 when TLS is not configured).
    pub amqps: std::net::SocketAddr,
    pub mgmt: std::net::SocketAddr,
    pub metrics: std::net::SocketAddr,
}

impl Child {
    pub fn spawn(data_dir: &std::path::Path) -> Child {
        Child::spawn_with(data_dir, &[])
    }

    /// With extra arguments (e.g. `--set` or `--config`), after the
    /// test ones.
    pub fn spawn_with(data_dir: &std::path::Path, extra: &[&str]) -> Child {
        let ports = data_dir.with_extension(format!("ports-{}", std::process::id()));
        let _ = std::fs::remove_file(&ports);
        let process = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args([
                "--amqp-port",
                "0",
                "--mgmt-port",
                "0",
                "--metrics-port",
                "0",
                "--bind",
                "127.0.0.1",
                "--log-level",
                "warn",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--ports-file")
            .arg(&ports)
            .args(["--set", "amqp.tls_port=0"])
            .args(extra)
            .spawn()
            .expect("spawn warren");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&ports) {
                break t;
            }
            assert!(std::time::Instant::now() < deadline, "warren did not write its ports file");
            std::thread::sleep(Duration::from_millis(20)); // poll until the deadline
        };
        let port_of = |key: &str| -> u16 {
            text.split(&format!("\"{key}\":"))
                .nth(1)
                .and_then(|r| r.split([',', '}']).next())
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or_else(|| panic!("{key} port in ports file: {text}"))
        };
        Child {
            process,
            amqp: ([127, 0, 0, 1], port_of("amqp")).into(),
            amqps: ([127, 0, 0, 1], port_of("amqps")).into(),
            mgmt: ([127, 0, 0, 1], port_of("mgmt")).into(),
            metrics: ([127, 0, 0, 1], port_of("metrics")).into(),
        }
    }

    /// Sends `sig` (e.g. "HUP") to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.process.id().to_string();
        let ok = std::process::Command::new("kill").args([&format!("-{sig}"), &pid]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
    }

    /// Resident memory of the process (VmRSS), from /proc.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.id())).expect("proc status");
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// SIGTERM; returns the exit status (waits up to 30 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.process.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.process.try_wait().expect("wait") {
                return st;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.process.kill();
                panic!("warren did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20)); // poll until the deadline
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A minimal HTTP/1.1 client for the management API tests.
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
) -> HttpReply {
    http_with(addr, method, path, auth, body, &[]).await
}

/// `http` with extra request headers.
pub async fn http_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
    extra: &[(&str, &str)],
) -> HttpReply {
    use base64::Engine;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some((u, p)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "PUT" || method == "POST" {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut sock = TcpStream::connect(addr).await.expect("http connect");
    sock.write_all(req.as_bytes()).await.expect("http write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut raw))
        .await
        .expect("http reply in time")
        .expect("http read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("http head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 =
        lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked =
        headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
            rest = &rest[nl + 2 + size + 2..];
        }
        body = out;
    }
    HttpReply { status, headers, body }
}

/// The default administrator's credentials for management calls.
pub const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

/// The management API's address of a test broker.
pub fn mgmt(s: &TestServer) -> std::net::SocketAddr {
    s.handle.as_ref().expect("running").mgmt_addr
}

/// `PUT path` with a JSON body as guest; asserts 201 or 204 and returns it.
#[allow(dead_code)]
pub async fn put(s: &TestServer, path: &str, body: serde_json::Value) -> u16 {
    let r = http(mgmt(s), "PUT", path, GUEST, Some(&body.to_string())).await;
    assert!(
        r.status == 201 || r.status == 204,
        "PUT {path}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    r.status
}
