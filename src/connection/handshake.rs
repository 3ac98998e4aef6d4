//! The opening handshake, on the unsplit socket: protocol header,
//! start/start-ok (PLAIN, AMQPLAIN), tune/tune-ok validation, open.
//! Errors here close the connection as RabbitMQ does.

use crate::broker::Broker;
use crate::broker::vhost::VHost;
use crate::error::{AmqpError, code};
use crate::protocol::frame::{self, FRAME_METHOD, Frame, PROTOCOL_HEADER};
use crate::protocol::properties::parse_table;
use crate::protocol::{AMQPClass, AMQPValue, FieldTable, LongString, parse_class, short};
use amq_protocol::protocol::connection;
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What the handshake settled.
pub struct Negotiated {
    pub user: String,
    pub vhost: Arc<VHost>,
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
    pub client_properties: FieldTable,
    pub cancel_notify: bool,
    /// The client takes `connection.blocked` / `unblocked`.
    pub blocked_notify: bool,
    pub mechanism: String,
}

/// Why the handshake ended without a connection.
pub enum Failed {
    /// Just close the socket.
    Silent,
    /// Send `connection.close` with this error, then close.
    Close(AmqpError),
}

pub fn server_properties(broker: &Broker) -> FieldTable {
    let id = &broker.config.identity;
    let mut caps = FieldTable::default();
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
        caps.insert(c.into(), AMQPValue::Boolean(true));
    }
    let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
    let mut t = FieldTable::default();
    t.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    t.insert("cluster_name".into(), s(&id.cluster_name));
    t.insert("copyright".into(), s("Copyright (c) the Warren authors"));
    t.insert(
        "information".into(),
        s("Warren, an AMQP 0-9-1 broker compatible with RabbitMQ clients; see the README"),
    );
    t.insert("platform".into(), s(&format!("Rust/Tokio (warren {})", env!("CARGO_PKG_VERSION"))));
    t.insert("product".into(), s(&id.product));
    t.insert("version".into(), s(&id.version));
    t.insert("warren_version".into(), s(env!("CARGO_PKG_VERSION")));
    t
}

fn capability(props: &FieldTable, name: &str) -> bool {
    match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => {
            matches!(t.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

async fn write_method<S: AsyncWrite + Unpin>(sock: &mut S, m: &AMQPClass) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    frame::encode_method(&mut out, 0, m);
    sock.write_all(&out).await?;
    sock.flush().await
}

/// Reads the next method frame on channel 0, skipping heartbeats.
async fn read_method<S: AsyncRead + Unpin>(
    sock: &mut S,
    buf: &mut BytesMut,
    frame_max: u32,
) -> Result<AMQPClass, Failed> {
    loop {
        match frame::decode(buf, frame_max) {
            Err(e) => return Err(Failed::Close(e)),
            Ok(Some(Frame { kind: frame::FRAME_HEARTBEAT, .. })) => continue,
            Ok(Some(Frame { kind: FRAME_METHOD, channel: 0, payload })) => {
                return match parse_class(&payload[..]) {
                    Ok((_, m)) => Ok(m),
                    Err(_) => Err(Failed::Silent),
                };
            }
            Ok(Some(_)) => return Err(Failed::Silent),
            Ok(None) => {}
        }
        match sock.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(Failed::Silent),
            Ok(_) => {}
        }
    }
}

/// Runs the handshake. `buf` keeps any bytes read past `connection.open`.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    broker: &Broker,
    sock: &mut S,
    loopback: bool,
    buf: &mut BytesMut,
) -> Result<Negotiated, Failed> {
    let cfg = &broker.config.amqp;
    while buf.len() < 8 {
        match sock.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(Failed::Silent),
            Ok(_) => {}
        }
    }
    if &buf[..8] != PROTOCOL_HEADER {
        let _ = sock.write_all(PROTOCOL_HEADER).await;
        let _ = sock.flush().await;
        return Err(Failed::Silent);
    }
    let _ = buf.split_to(8);

    let start = AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: server_properties(broker),
        // RabbitMQ lists its registered mechanisms in ETS hash order, which
        // differs between installations (this host's 3.10.8 sends "PLAIN
        // AMQPLAIN"); this is the order of the reference capture in
        // `../shared/docs/mgmt-samples/amqp-connection-start-3.10.8.json`.
        mechanisms: LongString::from(b"AMQPLAIN PLAIN".to_vec()),
        locales: LongString::from(b"en_US".to_vec()),
    }));
    write_method(sock, &start).await.map_err(|_| Failed::Silent)?;

    let AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)) =
        read_method(sock, buf, frame::FRAME_MIN_SIZE).await?
    else {
        return Err(Failed::Silent);
    };
    let auth_close = capability(&start_ok.client_properties, "authentication_failure_close");
    let mechanism = start_ok.mechanism.to_string();
    let response = start_ok.response.as_bytes();
    let creds: Option<(String, String)> = match mechanism.as_str() {
        "PLAIN" => {
            let parts: Vec<&[u8]> = response.split(|b| *b == 0).collect();
            match parts.as_slice() {
                [[], user, pass] => Some((
                    String::from_utf8_lossy(user).into_owned(),
                    String::from_utf8_lossy(pass).into_owned(),
                )),
                _ => {
                    return Err(Failed::Close(
                        AmqpError::new(
                            code::SYNTAX_ERROR,
                            "authentication failure: response for mechanism PLAIN is invalid",
                        )
                        .on(10, 11),
                    ));
                }
            }
        }
        "AMQPLAIN" => parse_table(response).and_then(|t| {
            let get = |k: &str| match t.inner().get(k) {
                Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
                Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
                _ => None,
            };
            Some((get("LOGIN")?, get("PASSWORD")?))
        }),
        other => {
            return Err(Failed::Close(
                AmqpError::command_invalid(format!("unknown authentication mechanism '{other}'")).on(10, 11),
            ));
        }
    };
    let ok = creds.as_ref().is_some_and(|(u, p)| broker.authenticate(u, p, loopback));
    broker.counters.count_auth(true, ok);
    let user = match creds {
        Some((user, _)) if ok => user,
        other => {
            let who = other.map(|(u, _)| u).unwrap_or_default();
            tracing::warn!(user = %who, mechanism = %mechanism, "login refused");
            return Err(if auth_close {
                Failed::Close(AmqpError::access_refused(format!(
                    "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                )))
            } else {
                Failed::Silent
            });
        }
    };

    let tune = AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
        channel_max: cfg.channel_max,
        frame_max: cfg.frame_max,
        heartbeat: cfg.heartbeat,
    }));
    write_method(sock, &tune).await.map_err(|_| Failed::Silent)?;
    let AMQPClass::Connection(connection::AMQPMethod::TuneOk(tok)) =
        read_method(sock, buf, frame::FRAME_MIN_SIZE).await?
    else {
        return Err(Failed::Silent);
    };
    negotiate("channel_max", 1, cfg.channel_max as u32, tok.channel_max as u32)?;
    negotiate("frame_max", frame::FRAME_MIN_SIZE, cfg.frame_max, tok.frame_max)?;
    let channel_max = if tok.channel_max == 0 { cfg.channel_max } else { tok.channel_max };
    let frame_max = if tok.frame_max == 0 { cfg.frame_max } else { tok.frame_max };

    let AMQPClass::Connection(connection::AMQPMethod::Open(open)) = read_method(sock, buf, frame_max).await?
    else {
        return Err(Failed::Silent);
    };
    let vhost_name = open.virtual_host.to_string();
    let Some(vhost) = broker.vhost(&vhost_name) else {
        return Err(Failed::Close(
            AmqpError::not_allowed(format!("vhost {vhost_name} not found")).on(10, 40),
        ));
    };
    // RabbitMQ's check_vhost_access: any permission entry opens the vhost.
    if broker.access.get(&user, &vhost_name).is_none() {
        return Err(Failed::Close(
            AmqpError::not_allowed(format!("access to vhost '{vhost_name}' refused for user '{user}'"))
                .on(10, 40),
        ));
    }
    let ok = AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {}));
    write_method(sock, &ok).await.map_err(|_| Failed::Silent)?;
    Ok(Negotiated {
        user,
        vhost,
        channel_max,
        frame_max,
        heartbeat: tok.heartbeat,
        cancel_notify: capability(&start_ok.client_properties, "consumer_cancel_notify"),
        blocked_notify: capability(&start_ok.client_properties, "connection.blocked"),
        mechanism: start_ok.mechanism.to_string(),
        client_properties: start_ok.client_properties,
    })
}

/// RabbitMQ's `validate_negotiated_integer_value`.
fn negotiate(field: &str, min: u32, server: u32, client: u32) -> Result<(), Failed> {
    let detail = if field == "channel_max" && client == 0 { " (no limit)" } else { "" };
    let fail = |dir: &str, bound: &str, v: u32| {
        Err(Failed::Close(
            AmqpError::not_allowed(format!(
                "negotiated {field} = {client}{detail} is {dir} than the {bound} allowed value ({v})"
            ))
            .on(10, 31),
        ))
    };
    if client != 0 && client < min {
        return fail("lower", "minimum", min);
    }
    if server != 0 && (client == 0 || client > server) {
        return fail("higher", "maximum", server);
    }
    Ok(())
}

/// Writes `connection.close` for a failed handshake (best effort).
pub async fn refuse<S: AsyncWrite + Unpin>(sock: &mut S, e: &AmqpError) {
    let m = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: e.code,
        reply_text: short(&e.reply_text()),
        class_id: e.class_id,
        method_id: e.method_id,
    }));
    let _ = write_method(sock, &m).await;
}
