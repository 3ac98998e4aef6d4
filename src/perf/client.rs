//! The load generator's AMQP client: just what the scenarios need (PLAIN
//! login, one channel, exchange and queue declare/bind/delete, qos, consume,
//! confirm.select, publish, ack, pipelined calls),
//! on Warren's own frame codec so that the client costs little next to the
//! broker it measures. Not used by the broker.

use crate::protocol::frame::{self, FRAME_METHOD, Frame};
use crate::protocol::{AMQPClass, FieldTable, LongString};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue};
use bytes::BytesMut;
use std::io::{Error, ErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// `amqp://user:pass@host:port/vhost`, the parts the client needs.
#[derive(Debug, Clone)]
pub struct Uri {
    pub user: String,
    pub pass: String,
    pub host: String,
    pub port: u16,
    pub vhost: String,
}

impl Uri {
    pub fn parse(s: &str) -> Result<Uri, String> {
        let rest =
            s.strip_prefix("amqp://").ok_or_else(|| format!("{s}: only amqp:// URIs are supported"))?;
        let (auth, rest) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
        let (user, pass) = auth.split_once(':').unwrap_or((auth, ""));
        let (hostport, vhost) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| format!("{s}: bad port '{p}'"))?),
            None => (hostport, 5672),
        };
        let vhost = if vhost.is_empty() { "/".to_string() } else { percent_decode(vhost) };
        Ok(Uri {
            user: percent_decode(user),
            pass: percent_decode(pass),
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            vhost,
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn protocol_error(what: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidData, what.into())
}

/// Reads frames from one half of a connection.
pub struct Reader {
    rd: OwnedReadHalf,
    buf: BytesMut,
}

impl Reader {
    /// The next frame; an error at EOF.
    pub async fn frame(&mut self) -> std::io::Result<Frame> {
        loop {
            match frame::decode(&mut self.buf, 0) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(protocol_error(e.to_string())),
            }
            // Small for an idle connection (the mass-connection scenario
            // holds thousands), growing to 64 KiB reads under load.
            let want = self.buf.capacity().clamp(4096, 64 * 1024);
            if self.buf.capacity() - self.buf.len() < want / 4 {
                self.buf.reserve(want);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(Error::new(ErrorKind::UnexpectedEof, "the broker closed the connection"));
            }
        }
    }

    /// The next method frame, decoded; `connection.close` / `channel.close`
    /// become errors with the broker's reply.
    pub async fn method(&mut self) -> std::io::Result<AMQPClass> {
        loop {
            let f = self.frame().await?;
            if f.kind != FRAME_METHOD {
                continue;
            }
            let m = crate::protocol::decode_method(&f.payload).map_err(|e| protocol_error(e.to_string()))?;
            match &m {
                AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                    return Err(protocol_error(format!(
                        "connection closed: {} {}",
                        c.reply_code, c.reply_text
                    )));
                }
                AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                    return Err(protocol_error(format!("channel closed: {} {}", c.reply_code, c.reply_text)));
                }
                _ => return Ok(m),
            }
        }
    }
}

/// A connection with channel 1 open.
pub struct Conn {
    pub reader: Reader,
    pub wr: OwnedWriteHalf,
    pub frame_max: u32,
}

impl Conn {
    /// Connects, logs in and opens channel 1, within 30 s.
    pub async fn open(uri: &Uri) -> std::io::Result<Conn> {
        tokio::time::timeout(std::time::Duration::from_secs(30), Conn::handshake(uri))
            .await
            .map_err(|_| Error::new(ErrorKind::TimedOut, "no connection and channel within 30 s"))?
    }

    async fn handshake(uri: &Uri) -> std::io::Result<Conn> {
        let sock = TcpStream::connect((uri.host.as_str(), uri.port)).await?;
        sock.set_nodelay(true)?;
        let (rd, wr) = sock.into_split();
        let mut c = Conn { reader: Reader { rd, buf: BytesMut::with_capacity(4096) }, wr, frame_max: 131072 };
        c.wr.write_all(frame::PROTOCOL_HEADER).await?;
        match c.reader.method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(_)) => {}
            other => return Err(protocol_error(format!("expected connection.start, got {other:?}"))),
        }
        let mut response = vec![0u8];
        response.extend_from_slice(uri.user.as_bytes());
        response.push(0);
        response.extend_from_slice(uri.pass.as_bytes());
        let mut props = FieldTable::default();
        props.insert("product".into(), crate::protocol::AMQPValue::LongString("warren perf".into()));
        c.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: LongString::from(response),
                locale: "en_US".into(),
            })),
        )
        .await?;
        let tune = match c.reader.method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => return Err(protocol_error(format!("expected connection.tune, got {other:?}"))),
        };
        c.frame_max = match tune.frame_max {
            0 => 131072,
            n => n.min(131072),
        };
        c.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 1,
                frame_max: c.frame_max,
                heartbeat: 0,
            })),
        )
        .await?;
        c.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: uri.vhost.as_str().into(),
            })),
        )
        .await?;
        c.reader.method().await?; // open-ok
        c.call(AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))).await?;
        Ok(c)
    }

    pub async fn send(&mut self, ch: u16, m: AMQPClass) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        frame::encode_method(&mut out, ch, &m);
        self.wr.write_all(&out).await
    }

    /// Sends a method on channel 1 and returns the next method back.
    pub async fn call(&mut self, m: AMQPClass) -> std::io::Result<AMQPClass> {
        self.send(1, m).await?;
        self.reader.method().await
    }

    pub async fn declare(&mut self, name: &str, durable: bool) -> std::io::Result<()> {
        self.call(declare_queue(name, durable)).await.map(|_| ())
    }

    pub async fn delete(&mut self, name: &str) -> std::io::Result<()> {
        self.call(delete_queue(name)).await.map(|_| ())
    }

    /// The number of ready messages in a queue (a passive declare).
    pub async fn message_count(&mut self, name: &str) -> std::io::Result<u32> {
        let m = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        }));
        match self.call(m).await? {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
            other => Err(protocol_error(format!("expected queue.declare-ok, got {other:?}"))),
        }
    }

    pub async fn declare_exchange(&mut self, name: &str, kind: &str) -> std::io::Result<()> {
        self.call(AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: name.into(),
            kind: kind.into(),
            passive: false,
            durable: false,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments: FieldTable::default(),
        })))
        .await
        .map(|_| ())
    }

    pub async fn delete_exchange(&mut self, name: &str) -> std::io::Result<()> {
        self.call(AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: name.into(),
            if_unused: false,
            nowait: false,
        })))
        .await
        .map(|_| ())
    }

    pub async fn bind(&mut self, queue: &str, exchange: &str, key: &str) -> std::io::Result<()> {
        self.call(bind_queue(queue, exchange, key)).await.map(|_| ())
    }

    /// Sends every method on channel 1 in one write, then reads as many
    /// replies (each synchronous method has exactly one, in order).
    pub async fn pipeline(&mut self, methods: &[AMQPClass]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        for m in methods {
            frame::encode_method(&mut out, 1, m);
        }
        self.wr.write_all(&out).await?;
        for _ in methods {
            self.reader.method().await?;
        }
        Ok(())
    }

    pub async fn confirm_select(&mut self) -> std::io::Result<()> {
        self.call(AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select { nowait: false })))
            .await
            .map(|_| ())
    }

    pub async fn consume(&mut self, queue: &str, prefetch: u16, no_ack: bool) -> std::io::Result<()> {
        if prefetch > 0 {
            self.call(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: prefetch,
                global: false,
            })))
            .await?;
        }
        self.call(AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue.into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })))
        .await
        .map(|_| ())
    }

    /// Closes politely (close, then close-ok), ignoring a broker already gone.
    pub async fn close(mut self) {
        let _ = self
            .send(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                    reply_code: 200,
                    reply_text: "done".into(),
                    class_id: 0,
                    method_id: 0,
                })),
            )
            .await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.reader.frame()).await;
    }
}

/// `queue.declare` (not passive, not exclusive, not auto-delete).
pub fn declare_queue(name: &str, durable: bool) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive: false,
        durable,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

/// `queue.delete`, unconditional.
pub fn delete_queue(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
        queue: name.into(),
        if_unused: false,
        if_empty: false,
        nowait: false,
    }))
}

/// `queue.bind` with no arguments.
pub fn bind_queue(queue: &str, exchange: &str, key: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
        queue: queue.into(),
        exchange: exchange.into(),
        routing_key: key.into(),
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

/// Appends one publish (method, header, body frames) to `out`.
pub fn encode_publish(
    out: &mut BytesMut,
    exchange: &str,
    routing_key: &str,
    persistent: bool,
    body: &[u8],
    frame_max: u32,
) {
    frame::encode_method(
        out,
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    );
    // Property flags: delivery-mode only (bit 12), then its octet.
    let props: &[u8] = if persistent { &[0x10, 0x00, 2] } else { &[0, 0] };
    frame::encode_content_header(out, 1, body.len() as u64, props);
    if !body.is_empty() {
        frame::encode_body(out, 1, body, frame_max);
    }
}

/// Appends a `basic.ack` on channel 1.
pub fn encode_ack(out: &mut BytesMut, tag: u64, multiple: bool) {
    frame::encode_method(
        out,
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack { delivery_tag: tag, multiple })),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_like_amqp_uris() {
        let u = Uri::parse("amqp://u%40x:p@127.0.0.1:5673/%2f").unwrap();
        assert_eq!(
            (u.user.as_str(), u.pass.as_str(), u.host.as_str(), u.port),
            ("u@x", "p", "127.0.0.1", 5673)
        );
        assert_eq!(u.vhost, "/");
        let u = Uri::parse("amqp://localhost/v1").unwrap();
        assert_eq!((u.user.as_str(), u.port, u.vhost.as_str()), ("guest", 5672, "v1"));
        assert!(Uri::parse("http://x").is_err());
        assert!(Uri::parse("amqp://h:notaport/").is_err());
    }
}
