//! One client connection: the reader (this task) owns the read half and the
//! channels' publish-side state; a writer task owns the write half and drains
//! the outbox. The reader reads a batch, handles every frame in it, then
//! releases what the batch produced (coalesced publisher confirms).

mod channel;
mod handshake;
mod route_cache;
mod socket;
mod writer;

use crate::broker::Broker;
use crate::broker::registry::ConnectionInfo;
use crate::broker::vhost::VHost;
use crate::channel_map::ChannelMap;
use crate::error::{AmqpError, Scope, code};
use crate::protocol::frame::{self, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, Frame};
use crate::protocol::{AMQPClass, FieldTable, decode_method, short};
use crate::queue::Queue;
use crate::queue::sink::{ChannelDeliveries, Outbox, Unacked};
use amq_protocol::protocol::{channel as chm, connection as conm};
use bytes::BytesMut;
use channel::Channel;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Read buffer size: how much one read can bring in (many frames at once).
const READ_CHUNK: usize = 64 * 1024;
/// A new connection's read buffer; it grows toward `READ_CHUNK` only while
/// reads fill it, so 10,000 idle connections do not hold 64 KiB each.
const FIRST_READ: usize = 4096;
/// How long a deferred read waits (the runtime's timers tick in
/// milliseconds, so this is one tick, 1–2 ms in practice).
const READ_COALESCE_TICK: Duration = Duration::from_millis(1);
/// How long to wait for `connection.close-ok` after sending `connection.close`.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);

/// A read of `got` bytes into `room` is big enough (at least `min`, not 0)
/// for the next to wait, and did not fill the buffer: a full buffer means
/// more is waiting right now.
fn worth_deferring(min: usize, got: usize, room: usize) -> bool {
    min > 0 && got >= min && got < room
}

/// Everything channel methods need from their connection.
pub struct Conn {
    pub broker: Arc<Broker>,
    pub vhost: Arc<VHost>,
    pub outbox: Arc<Outbox>,
    pub id: u64,
    pub user: String,
    pub frame_max: u32,
    pub channel_max: u16,
    pub client_properties: FieldTable,
    /// Exclusive queues this connection declared (deleted when it closes).
    pub exclusive_queues: Vec<Arc<Queue>>,
    channels: ChannelMap<Channel>,
    /// The last exchange published to and default-exchange queue reached.
    route_cache: route_cache::RouteCache,
    /// Connection-level close sent; waiting for close-ok.
    closing: bool,
    /// This user's permissions in the vhost, as of `access_generation`.
    access: AccessCache,
    /// What management sees of this connection.
    pub info: Arc<ConnectionInfo>,
    /// A channel setting changed: refresh `info.channels` after the batch.
    info_dirty: bool,
    /// A basic.publish arrived in this read batch (resource alarms block
    /// a connection when it publishes, as RabbitMQ's reader does).
    published: bool,
    /// The client takes connection.blocked / unblocked.
    blocked_notify: bool,
}

/// A connection's copy of its permissions, refreshed when any permission
/// in the broker changes (a generation counter), so that the publish path
/// costs one atomic load and one comparison.
#[derive(Default)]
struct AccessCache {
    generation: u64,
    permission: Option<Arc<crate::broker::access::Permission>>,
    /// The last exchange a publish was allowed to write to.
    publish_ok: Option<bytes::Bytes>,
}

/// A byte stream a connection runs on, split into a read half for the
/// reader and a write half for the writer task.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    /// The halves, and a handle on the socket for writes from other
    /// threads (`OutState::write_direct`); `None` where writes must go
    /// through the session (TLS).
    fn split(self) -> (Self::Read, Self::Write, Option<Arc<TcpStream>>);
}

impl Transport for TcpStream {
    type Read = socket::SharedRead;
    type Write = socket::SharedWrite;
    fn split(self) -> (Self::Read, Self::Write, Option<Arc<TcpStream>>) {
        let (rd, wr, direct) = socket::split(self);
        (rd, wr, Some(direct))
    }
}

/// TLS needs one session for both directions: tokio's split shares it
/// behind a lock.
impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn split(self) -> (Self::Read, Self::Write, Option<Arc<TcpStream>>) {
        let (rd, wr) = tokio::io::split(self);
        (rd, wr, None)
    }
}

/// Serves one accepted plain socket until it closes.
/// An IPv4 client of a dual-stack listener arrives as `::ffff:a.b.c.d`;
/// it is shown, and checked for loopback, as the IPv4 address it is.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

pub async fn serve(broker: Arc<Broker>, sock: TcpStream, peer: SocketAddr, shutdown: watch::Receiver<bool>) {
    let _ = sock.set_nodelay(true);
    let peer = canonical(peer);
    let local = canonical(sock.local_addr().unwrap_or(peer));
    run(broker, sock, peer, local, None, shutdown).await
}

/// Serves one accepted AMQPS socket: the TLS handshake (within the AMQP
/// handshake timeout), then the connection.
pub async fn serve_tls(
    broker: Arc<Broker>,
    sock: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: watch::Receiver<bool>,
) {
    let _ = sock.set_nodelay(true);
    let peer = canonical(peer);
    let local = canonical(sock.local_addr().unwrap_or(peer));
    let timeout = Duration::from_millis(broker.config.amqp.handshake_timeout_ms);
    let stream = match tokio::time::timeout(timeout, acceptor.accept(sock)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let session = crate::tls::describe(&stream);
    run(broker, stream, peer, local, Some(session), shutdown).await
}

async fn run<S: Transport>(
    broker: Arc<Broker>,
    mut sock: S,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<(String, String)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    let timeout = Duration::from_millis(broker.config.amqp.handshake_timeout_ms);
    let loopback = peer.ip().is_loopback();
    let neg =
        match tokio::time::timeout(timeout, handshake::run(&broker, &mut sock, loopback, &mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(handshake::Failed::Close(e))) => {
                tracing::info!(%peer, error = %e, "handshake refused");
                handshake::refuse(&mut sock, &e).await;
                let _ = sock.flush().await;
                return;
            }
            Ok(Err(handshake::Failed::Silent)) => {
                tracing::debug!(%peer, "handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "handshake timed out");
                return;
            }
        };
    let id = broker.next_connection_id();
    tracing::info!(%peer, conn = id, user = %neg.user, vhost = %neg.vhost.name, "connection opened");
    broker.counters.connections.fetch_add(1, Ordering::Relaxed);
    broker.counters.connections_opened.fetch_add(1, Ordering::Relaxed);

    let outbox = Outbox::new(
        id,
        broker.config.amqp.write_buffer_high_water,
        [broker.counters.confirmed.clone(), neg.vhost.msg.confirm.clone()],
    );
    let (rd, wr, direct) = sock.split();
    outbox.with(|st| {
        st.frame_max = neg.frame_max;
        st.cancel_notify = neg.cancel_notify;
        st.direct = direct;
    });
    let info = Arc::new(ConnectionInfo::new(
        id,
        peer,
        local,
        neg.user.clone(),
        neg.vhost.name.clone(),
        neg.client_properties.clone(),
        neg.frame_max,
        neg.channel_max,
        neg.heartbeat,
        neg.mechanism.clone(),
        outbox.clone(),
    ));
    if let Some(session) = tls {
        let _ = info.tls.set(session);
    }
    broker.registry.add(info.clone());
    let writer = tokio::spawn(writer::run(outbox.clone(), wr, neg.heartbeat));
    let mut conn = Conn {
        broker: broker.clone(),
        vhost: neg.vhost,
        outbox: outbox.clone(),
        id,
        user: neg.user,
        frame_max: neg.frame_max,
        channel_max: neg.channel_max,
        client_properties: neg.client_properties,
        exclusive_queues: Vec::new(),
        channels: ChannelMap::new(),
        route_cache: Default::default(),
        closing: false,
        access: AccessCache { generation: u64::MAX, ..Default::default() },
        info,
        info_dirty: false,
        published: false,
        blocked_notify: neg.blocked_notify,
    };
    let mut rd = rd;
    let reason = conn.read_loop(&mut rd, buf, neg.heartbeat, &mut shutdown).await;
    tracing::info!(%peer, conn = id, reason, "connection closed");
    conn.teardown();
    broker.registry.remove(id);
    // RabbitMQ answers a client's connection.close with close-ok and then
    // waits for the client to close the socket; after a close it started
    // itself (and the client's close-ok), it closes at once.
    let client_closed = reason == "client closed the connection";
    outbox.with(|st| {
        st.closed = true;
        st.shutdown = true;
        st.keep_open = client_closed;
        st.direct = None;
    });
    let held = tokio::time::timeout(Duration::from_secs(5), writer).await.ok().and_then(|r| r.ok()).flatten();
    broker.counters.connections.fetch_sub(1, Ordering::Relaxed);
    broker.counters.connections_closed.fetch_add(1, Ordering::Relaxed);
    if matches!(reason, "client closed the connection" | "closed by broker" | "closed") {
        linger(&mut rd, neg.heartbeat, &mut shutdown).await;
    }
    // Dropping the write half now shuts it (or the whole socket) down.
    drop(held);
}

/// After the close handshake, reads and drops whatever the client still
/// sends until it closes its socket, for at most the heartbeat interval
/// (when under 30 s) or 30 s, as RabbitMQ's reader does in its `closed`
/// state. Closing at once would make the kernel answer the unread bytes
/// with a reset: a client that writes frames after its `connection.close`
/// (amqplib flushes publishes it buffered before the close) gets EPIPE
/// instead of reading `close-ok`.
async fn linger<R: AsyncRead + Unpin>(rd: &mut R, heartbeat: u16, shutdown: &mut watch::Receiver<bool>) {
    if *shutdown.borrow() {
        return;
    }
    let limit = Duration::from_secs(if heartbeat > 0 && heartbeat < 30 { heartbeat as u64 } else { 30 });
    let mut scratch = [0u8; 1024];
    let drain = async {
        while let Ok(n) = rd.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(limit, drain) => {}
        _ = shutdown.changed() => {}
    }
}

impl Conn {
    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        mut buf: BytesMut,
        heartbeat: u16,
        shutdown: &mut watch::Receiver<bool>,
    ) -> &'static str {
        // RabbitMQ gives up after two missed heartbeat intervals.
        let idle_limit = (heartbeat > 0).then(|| Duration::from_secs(heartbeat as u64 * 2));
        let mut close_deadline: Option<tokio::time::Instant> = None;
        let mut chunk = FIRST_READ;
        // The last read was big and drained the socket (`worth_deferring`).
        let mut big_read = false;
        loop {
            // Handle every complete frame already buffered; what they
            // produce is written when the batch ends.
            {
                let _batch = crate::queue::sink::Batch::begin();
                loop {
                    match frame::decode(&mut buf, self.frame_max) {
                        Ok(Some(f)) => match self.handle_frame(f) {
                            Flow::Continue => {}
                            Flow::Stop(why) => return why,
                        },
                        Ok(None) => break,
                        Err(e) => {
                            self.close_connection(e);
                            return "frame error";
                        }
                    }
                }
                self.end_of_batch();
            }
            let published = std::mem::take(&mut self.published) && !self.closing;
            if published && self.broker.alarms.active() != 0 {
                self.stay_blocked(shutdown).await;
            }
            if published && self.broker.store.messages.congested() {
                self.wait_for_persister(shutdown).await;
            }
            if self.closing && close_deadline.is_none() {
                close_deadline = Some(tokio::time::Instant::now() + CLOSE_OK_TIMEOUT);
            }
            // Replies we produced are not being read by the peer: stop
            // reading its socket until they drain.
            self.outbox.wait_for_room().await;
            // Decided after the frames just read were handled: a
            // `confirm.select` among them already counts.
            if std::mem::take(&mut big_read) && self.nobody_waits() {
                self.info.reads_deferred.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(READ_COALESCE_TICK).await;
            }
            if buf.capacity() - buf.len() < chunk / 4 {
                buf.reserve(chunk);
            }
            let room = buf.capacity() - buf.len();
            let before = buf.len();
            let info = self.info.clone();
            let read = rd.read_buf(&mut buf);
            let ack_deadline = if self.closing { None } else { self.consumer_deadline() };
            let outcome = tokio::select! {
                r = async {
                    match (close_deadline, idle_limit) {
                        (Some(d), _) => tokio::time::timeout_at(d, read).await.map_err(|_| "close-ok timeout"),
                        (None, Some(limit)) => tokio::time::timeout(limit, read).await.map_err(|_| "missed heartbeats from client"),
                        (None, None) => Ok(read.await),
                    }
                } => r,
                _ = sleep_until_ms(ack_deadline.unwrap_or(0)), if ack_deadline.is_some() => {
                    self.check_consumer_timeouts();
                    continue;
                }
                reason = info.closed_by_broker(), if !self.closing => {
                    self.close_connection(AmqpError::new(code::CONNECTION_FORCED, reason));
                    continue;
                }
                _ = shutdown.changed(), if !self.closing => {
                    self.close_connection(AmqpError::new(code::CONNECTION_FORCED, "broker forced connection closure with reason 'shutdown'"));
                    continue;
                }
            };
            let got = buf.len().saturating_sub(before) as u64;
            self.info.recv_oct.fetch_add(got, Ordering::Relaxed);
            if got as usize == room && chunk < READ_CHUNK {
                chunk *= 2; // the peer sends more than one read takes
            }
            match outcome {
                Ok(Ok(0)) => return "client closed the socket",
                Ok(Ok(_)) => {
                    big_read =
                        worth_deferring(self.broker.config.amqp.read_coalesce_bytes, got as usize, room)
                }
                Ok(Err(_)) => return "socket error",
                Err(why) => {
                    if why.starts_with("missed") {
                        tracing::warn!(
                            conn = self.id,
                            "missed heartbeats from client, timeout: {}s",
                            heartbeat
                        );
                    }
                    return why;
                }
            }
        }
    }

    /// Nobody on this connection waits for an answer to what it sends: no
    /// channel in confirm or transaction mode, no consumer that acks. After
    /// a big read (`worth_deferring`) such a connection's next read waits a
    /// timer tick (`READ_COALESCE_TICK`) so that it takes a bigger batch.
    fn nobody_waits(&self) -> bool {
        !self.closing && !self.channels.values().any(Channel::awaits_replies) && !self.outbox.awaits_acks()
    }

    fn handle_frame(&mut self, f: Frame) -> Flow {
        if self.closing {
            // After connection.close only close / close-ok matter.
            if f.kind == FRAME_METHOD
                && f.channel == 0
                && let Ok((_, AMQPClass::Connection(m))) = crate::protocol::parse_class(&f.payload[..])
            {
                match m {
                    conm::AMQPMethod::CloseOk(_) => return Flow::Stop("closed by broker"),
                    conm::AMQPMethod::Close(_) => {
                        self.send_method(
                            0,
                            &AMQPClass::Connection(conm::AMQPMethod::CloseOk(conm::CloseOk {})),
                        );
                        return Flow::Stop("closed by broker");
                    }
                    _ => {}
                }
            }
            return Flow::Continue;
        }
        // As `rabbit_reader:handle_frame/4` with
        // `rabbit_command_assembler:analyze_frame/3`: a frame whose type is
        // unknown or whose payload cannot be that type is `unknown_frame`;
        // a well-formed frame in the wrong place is unexpected.
        let malformed = match f.kind {
            FRAME_METHOD => f.payload.len() < 4,
            FRAME_HEADER => f.payload.len() < 12,
            FRAME_BODY => false,
            FRAME_HEARTBEAT => !f.payload.is_empty(),
            _ => true,
        };
        let result = match (f.kind, f.channel) {
            _ if malformed => Err(AmqpError::frame_error(format!(
                "{}: unknown_frame",
                crate::error::frame_octets(f.kind, &f.payload)
            ))),
            (FRAME_HEARTBEAT, 0) => Ok(Flow::Continue),
            (FRAME_METHOD, 0) => self.connection_method(&f),
            (FRAME_HEARTBEAT, _) | (_, 0) => {
                Err(AmqpError::unexpected_frame(crate::error::frame_octets(f.kind, &f.payload)))
            }
            (_, ch) => self.channel_frame(ch, f),
        };
        match result {
            Ok(flow) => flow,
            // Channel-scoped errors were handled in `channel_frame`; what
            // reaches here closes the connection.
            Err(e) => {
                self.close_connection(e);
                Flow::Continue
            }
        }
    }

    fn connection_method(&mut self, f: &Frame) -> Result<Flow, AmqpError> {
        let m = decode_method(&f.payload)?;
        match m {
            AMQPClass::Connection(conm::AMQPMethod::Close(c)) => {
                tracing::debug!(conn = self.id, code = c.reply_code, text = %c.reply_text, "client closed connection");
                // As RabbitMQ: channels are shut down and the connection's
                // exclusive queues deleted before close-ok, so a client that
                // reconnects on close-ok can declare them again at once.
                self.release_all_channels();
                self.delete_exclusive_queues();
                self.send_method(0, &AMQPClass::Connection(conm::AMQPMethod::CloseOk(conm::CloseOk {})));
                Ok(Flow::Stop("client closed the connection"))
            }
            AMQPClass::Connection(conm::AMQPMethod::CloseOk(_)) => Ok(Flow::Stop("closed")),
            AMQPClass::Connection(conm::AMQPMethod::UpdateSecret(_)) => {
                self.send_method(
                    0,
                    &AMQPClass::Connection(conm::AMQPMethod::UpdateSecretOk(conm::UpdateSecretOk {})),
                );
                Ok(Flow::Continue)
            }
            AMQPClass::Connection(conm::AMQPMethod::Blocked(_) | conm::AMQPMethod::Unblocked(_)) => {
                Ok(Flow::Continue)
            }
            // RabbitMQ's reader: any other method on channel 0 once the
            // connection is open (`rabbit_reader:handle_method0/2`).
            other => Err(AmqpError::channel_error("unexpected method in connection state running")
                .on(other.get_amqp_class_id(), other.get_amqp_method_id())),
        }
    }

    fn channel_frame(&mut self, ch: u16, f: Frame) -> Result<Flow, AmqpError> {
        if let Some(chan) = self.channels.get_mut(ch) {
            if chan.closing {
                // Waiting for channel.close-ok: everything else is dropped.
                if f.kind == FRAME_METHOD
                    && let Ok(AMQPClass::Channel(m)) = decode_method(&f.payload)
                {
                    match m {
                        chm::AMQPMethod::CloseOk(_) => {
                            self.channels.remove(ch);
                        }
                        chm::AMQPMethod::Close(_) => {
                            self.channels.remove(ch);
                            self.send_method(
                                ch,
                                &AMQPClass::Channel(chm::AMQPMethod::CloseOk(chm::CloseOk {})),
                            );
                        }
                        _ => {}
                    }
                }
                return Ok(Flow::Continue);
            }
        } else {
            // Only channel.open is valid on a channel that is not open.
            if f.kind == FRAME_METHOD
                && let AMQPClass::Channel(chm::AMQPMethod::Open(_)) = decode_method(&f.payload)?
            {
                return self.open_channel(ch).map(|_| Flow::Continue);
            }
            let (c, m) = crate::protocol::fast::method_ids(&f.payload).unwrap_or((0, 0));
            return Err(AmqpError::channel_error("expected 'channel.open'").on(c, m));
        }
        let result = match f.kind {
            FRAME_METHOD => self.channel_method(ch, f.payload),
            FRAME_HEADER => self.content_header(ch, f.payload),
            FRAME_BODY => self.content_body(ch, f.payload),
            _ => Err(AmqpError::unexpected_frame("unexpected frame type")),
        };
        match result {
            Ok(()) => Ok(Flow::Continue),
            Err(e) if e.scope == Scope::Channel => {
                self.close_channel_with(ch, e);
                Ok(Flow::Continue)
            }
            Err(e) => Err(e),
        }
    }

    fn open_channel(&mut self, ch: u16) -> Result<(), AmqpError> {
        // RabbitMQ limits how many channels are open, not their numbers
        // (aiormq's own suite opens channel 65535 under channel_max 2047).
        let open = self.channels.len();
        if open >= self.channel_max as usize {
            return Err(AmqpError::not_allowed(format!(
                "number of channels opened ({open}) has reached the negotiated channel_max ({})",
                self.channel_max
            ))
            .on(20, 10));
        }
        self.channels.insert(ch, Channel::new());
        self.outbox.with(|st| {
            st.channels.insert(ch, ChannelDeliveries::default());
        });
        self.broker.counters.channels.fetch_add(1, Ordering::Relaxed);
        self.broker.counters.channels_opened.fetch_add(1, Ordering::Relaxed);
        self.info_dirty = true;
        self.send_method(ch, &AMQPClass::Channel(chm::AMQPMethod::OpenOk(chm::OpenOk {})));
        Ok(())
    }

    /// Server-initiated channel close (a soft error).
    fn close_channel_with(&mut self, ch: u16, e: AmqpError) {
        tracing::debug!(conn = self.id, channel = ch, error = %e, "channel error");
        self.release_channel(ch);
        if let Some(c) = self.channels.get_mut(ch) {
            c.closing = true;
        }
        let m = AMQPClass::Channel(chm::AMQPMethod::Close(chm::Close {
            reply_code: e.code,
            reply_text: short(&e.reply_text()),
            class_id: e.class_id,
            method_id: e.method_id,
        }));
        self.send_method(ch, &m);
    }

    /// Server-initiated connection close (a hard error or shutdown).
    fn close_connection(&mut self, e: AmqpError) {
        if self.closing {
            return;
        }
        tracing::info!(conn = self.id, error = %e, "closing connection");
        self.closing = true;
        self.release_all_channels();
        let m = AMQPClass::Connection(conm::AMQPMethod::Close(conm::Close {
            reply_code: e.code,
            reply_text: short(&e.reply_text()),
            class_id: e.class_id,
            method_id: e.method_id,
        }));
        self.send_method(0, &m);
    }

    pub fn send_method(&self, ch: u16, m: &AMQPClass) {
        self.outbox.send(|buf| frame::encode_method(buf, ch, m));
    }

    /// Cancels the channel's consumers and requeues its unacked deliveries.
    fn release_channel(&mut self, ch: u16) {
        self.drop_reply_consumer(ch);
        let taken = self.outbox.with(|st| st.channels.remove(ch));
        self.info_dirty = true;
        if let Some(c) = self.channels.get_mut(ch) {
            c.discard_pending();
        }
        let Some(mut deliveries) = taken else { return };
        self.broker.counters.channels.fetch_sub(1, Ordering::Relaxed);
        self.broker.counters.channels_closed.fetch_add(1, Ordering::Relaxed);
        // Unacked deliveries go back before the channel's consumers leave,
        // as RabbitMQ's queue handles a channel's exit: a single active
        // consumer that takes over gets them first, in their old places,
        // ahead of what was never delivered. (The closing channel's own
        // consumers refuse deliveries meanwhile: it is gone from the outbox.)
        requeue_all(deliveries.take_all());
        for (tag, entry) in deliveries.consumers.drain() {
            if entry.queue.remove_consumer(self.id, ch, &tag) {
                self.vhost.remove_queue(&entry.queue);
            }
        }
    }

    fn release_all_channels(&mut self) {
        let ids: Vec<u16> = self.channels.ids().collect();
        for ch in ids {
            self.release_channel(ch);
        }
    }

    fn teardown(&mut self) {
        self.outbox.with(|st| {
            st.closed = true;
            st.direct = None;
        });
        self.release_all_channels();
        self.channels.clear();
        self.delete_exclusive_queues();
    }

    fn delete_exclusive_queues(&mut self) {
        for q in std::mem::take(&mut self.exclusive_queues) {
            self.vhost.remove_queue(&q);
        }
    }

    /// When the oldest unacked delivery of some channel runs out of time
    /// (RabbitMQ checks the oldest delivery of each channel).
    fn consumer_deadline(&self) -> Option<u64> {
        let default = self.broker.config.consumers.consumer_timeout_ms;
        self.outbox.with(|st| {
            st.channels
                .values()
                .filter_map(|d| d.unacked.values().next())
                .filter_map(|u| {
                    let t = u.queue.consumer_timeout().unwrap_or(default);
                    (t > 0).then_some(u.at + t)
                })
                .min()
        })
    }

    /// Closes every channel whose oldest delivery was not acked in time, with
    /// RabbitMQ's 406 text; its unacked messages are requeued.
    fn check_consumer_timeouts(&mut self) {
        let default = self.broker.config.consumers.consumer_timeout_ms;
        let now = crate::queue::now_ms();
        let late: Vec<(u16, u64)> = self.outbox.with(|st| {
            st.channels
                .iter()
                .filter_map(|(ch, d)| {
                    let u = d.unacked.values().next()?;
                    let t = u.queue.consumer_timeout().unwrap_or(default);
                    (t > 0 && u.at + t <= now).then_some((ch, t))
                })
                .collect()
        });
        for (ch, t) in late {
            tracing::warn!(
                conn = self.id,
                channel = ch,
                timeout_ms = t,
                "consumer delivery acknowledgement timed out"
            );
            self.close_channel_with(
                ch,
                AmqpError::precondition(format!(
                    "delivery acknowledgement on channel {ch} timed out. Timeout value used: {t} ms. This timeout value can be configured, see consumers doc guide to learn more"
                )),
            );
        }
    }

    /// A resource alarm is on and this connection publishes: tell the
    /// client (`connection.blocked` with RabbitMQ's reason, when it takes
    /// it) and stop reading its socket until every alarm clears. Its
    /// deliveries keep flowing (the writer and the queues are not held), and
    /// heartbeats from the client are not expected meanwhile, as in
    /// RabbitMQ, which pauses its heartbeat monitor.
    async fn stay_blocked(&mut self, shutdown: &mut watch::Receiver<bool>) {
        let mut alarms = self.broker.alarms.subscribe();
        let active = *alarms.borrow_and_update();
        if active == 0 {
            return;
        }
        let reason = crate::broker::alarms::blocked_reason(active);
        tracing::info!(conn = self.id, reason, "connection blocked");
        if self.blocked_notify {
            self.send_method(
                0,
                &AMQPClass::Connection(conm::AMQPMethod::Blocked(conm::Blocked { reason: reason.into() })),
            );
        }
        self.info.blocked.store(true, Ordering::Relaxed);
        let info = self.info.clone();
        loop {
            let ack_deadline = self.consumer_deadline();
            tokio::select! {
                changed = alarms.changed() => {
                    if changed.is_err() || *alarms.borrow_and_update() == 0 {
                        break;
                    }
                }
                _ = sleep_until_ms(ack_deadline.unwrap_or(0)), if ack_deadline.is_some() => {
                    self.check_consumer_timeouts();
                }
                reason = info.closed_by_broker() => {
                    self.close_connection(AmqpError::new(code::CONNECTION_FORCED, reason));
                    break;
                }
                _ = shutdown.changed() => {
                    self.close_connection(AmqpError::new(code::CONNECTION_FORCED, "broker forced connection closure with reason 'shutdown'"));
                    break;
                }
            }
        }
        self.info.blocked.store(false, Ordering::Relaxed);
        if !self.closing {
            tracing::info!(conn = self.id, "connection unblocked");
            if self.blocked_notify {
                self.send_method(0, &AMQPClass::Connection(conm::AMQPMethod::Unblocked(conm::Unblocked {})));
            }
        }
    }

    /// Flow control: this connection publishes and the persister has more
    /// pages waiting than the flow limit. Stop reading its socket until the
    /// persister catches up (RabbitMQ's credit flow: no `connection.blocked`,
    /// management shows state "flow"). Deliveries keep flowing meanwhile.
    async fn wait_for_persister(&mut self, shutdown: &mut watch::Receiver<bool>) {
        self.info.flow_at.store(u64::MAX, Ordering::Relaxed);
        let info = self.info.clone();
        let store = self.broker.store.messages.clone();
        tokio::select! {
            _ = store.wait_for_room() => {}
            reason = info.closed_by_broker() => {
                self.close_connection(AmqpError::new(code::CONNECTION_FORCED, reason));
            }
            _ = shutdown.changed() => {
                self.close_connection(AmqpError::new(code::CONNECTION_FORCED, "broker forced connection closure with reason 'shutdown'"));
            }
        }
        self.info.flow_at.store(crate::queue::now_ms().max(1), Ordering::Relaxed);
    }

    /// Work deferred to the end of a read batch: coalesced confirms.
    fn end_of_batch(&mut self) {
        if self.info_dirty {
            self.info_dirty = false;
            let mut map = std::collections::BTreeMap::new();
            self.outbox.with(|st| {
                for (ch, c) in self.channels.iter() {
                    if let Some(d) = st.channels.get(ch) {
                        let mut i = c.info();
                        i.global_prefetch_count = d.global_limit;
                        map.insert(ch, i);
                    }
                }
            });
            *self.info.channels.lock() = map;
        }
        let outbox = &self.outbox;
        let mut n = 0;
        for (id, c) in self.channels.iter_mut() {
            n += c.flush_confirms(id, outbox);
        }
        if n > 0 {
            self.outbox.count_confirms(n);
        }
    }
}

/// Sleeps until a wall-clock time in ms since the epoch.
async fn sleep_until_ms(at: u64) {
    let now = crate::queue::now_ms();
    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await
}

/// Requeues settled-with-requeue deliveries, one call per queue.
pub(crate) fn requeue_all(unacked: Vec<Unacked>) {
    let mut by_queue: Vec<(Arc<Queue>, Vec<crate::queue::ready::QueuedMessage>)> = Vec::new();
    for u in unacked {
        match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, v)) => v.push(u.qm),
            None => by_queue.push((u.queue, vec![u.qm])),
        }
    }
    for (q, msgs) in by_queue {
        q.requeue(msgs);
    }
}

pub(crate) enum Flow {
    Continue,
    Stop(&'static str),
}

#[cfg(test)]
mod tests {
    use super::worth_deferring;

    #[test]
    fn only_a_big_read_that_drained_the_socket_defers_the_next() {
        assert!(worth_deferring(8192, 8192, 65536), "big, buffer not filled");
        assert!(worth_deferring(8192, 40000, 65536));
        assert!(!worth_deferring(8192, 8191, 65536), "below the threshold");
        assert!(!worth_deferring(8192, 65536, 65536), "filled the buffer: more is waiting");
        assert!(!worth_deferring(0, 40000, 65536), "0 disables");
        assert!(worth_deferring(1, 1, 4096));
    }
}
