//! Channel methods: the publish-side state a channel keeps in its connection's
//! reader (content assembly, confirms, transactions, last declared queue), and
//! the dispatch of every class-20..90 method with RabbitMQ's checks and texts.

use super::{Conn, requeue_all};
use crate::broker::access::{Access, checked_exchange_name, refused};
use crate::broker::dead_letter::dead_letter;
use crate::broker::vhost::{REPLY_TO, REPLY_TO_PREFIX, ReplyTarget};
use crate::error::{AmqpError, AmqpResult, code, rs};
use crate::exchange::Kind;
use crate::message::{self, Message};
use crate::protocol::decode_method;
use crate::protocol::fast::{self, BASIC_ACK, BASIC_PUBLISH, CLASS_BASIC};
use crate::protocol::properties::{self, Scanned};
use crate::protocol::{AMQPClass, short};
use crate::queue::Reason;
use crate::queue::sink::{ConfirmWaiter, ConsumerCredit, ConsumerEntry, Unacked};
use crate::queue::{Consumer, Queue, args, args::as_int};
use crate::store::Durable;
use amq_protocol::protocol::{basic, channel as chm, confirm, exchange, queue as qm, tx};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Content assembly (`rabbit_command_assembler`): method → header → body.
enum Content {
    Idle,
    Header(fast::Publish),
    Body(Box<BodyState>),
    /// More body octets arrived than the header announced. RabbitMQ's
    /// assembler then waits for a remaining size that never reaches zero
    /// (`rabbit_command_assembler:process/2`): the message is never
    /// published, and the next frame on the channel that is not a body is
    /// a 505. Further body frames are dropped here, not kept.
    Overflowed,
}

impl Content {
    /// The 505 for a frame this state does not expect: a method while a
    /// publish waits for its header or body, or content with no publish
    /// (`rabbit_command_assembler:process/2`'s texts).
    fn unexpected(&self) -> AmqpError {
        let (text, publish) = match self {
            Content::Idle => ("expected method frame, got non method frame instead", false),
            Content::Header(_) => {
                ("expected content header for class 60, got non content header frame instead", true)
            }
            Content::Body(_) | Content::Overflowed => {
                ("expected content body, got non content body frame instead", true)
            }
        };
        let e = AmqpError::unexpected_frame(text);
        if publish { e.on(CLASS_BASIC, BASIC_PUBLISH) } else { e }
    }
}

/// A publish whose body frames are still arriving.
struct BodyState {
    publish: fast::Publish,
    properties: Bytes,
    scanned: Scanned,
    size: u64,
    /// The first body frame, kept zero-copy when it is the whole body.
    first: Option<Bytes>,
    rest: BytesMut,
}

/// A publish waiting for `tx.commit`.
struct TxPublish {
    publish: fast::Publish,
    msg: Arc<Message>,
}

#[derive(Default)]
struct TxState {
    publishes: Vec<TxPublish>,
    /// (delivery tag, multiple, kind) settlements in order.
    settles: Vec<(u64, bool, Settle)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    Drop,
}

pub struct Channel {
    /// `channel.close` sent by the broker; waiting for close-ok.
    pub closing: bool,
    content: Content,
    confirm: bool,
    /// Sequence number of the last publish in confirm mode.
    publish_seq: u64,
    /// `publish_seq` as last reported to the confirm tracker.
    confirm_reported: u64,
    /// Publishes, returned and dropped unroutable publishes on this channel
    /// not yet added to the outbox's channel counters.
    unreported: [u64; 3],
    tx: Option<TxState>,
    last_queue: Option<String>,
    /// `basic.qos(global=false)`: the limit given to consumers created later.
    consumer_prefetch: u16,
    /// Scratch for routing results (reused to avoid an allocation per publish).
    routed: Vec<Arc<Queue>>,
    /// Direct reply-to consumer on this channel: (token, consumer tag).
    pub reply: Option<(String, Bytes)>,
}

impl Channel {
    pub fn new() -> Self {
        Channel {
            closing: false,
            content: Content::Idle,
            confirm: false,
            publish_seq: 0,
            confirm_reported: 0,
            unreported: [0; 3],
            tx: None,
            last_queue: None,
            consumer_prefetch: 0,
            routed: Vec::new(),
            reply: None,
        }
    }

    /// What management shows of this channel's settings.
    pub fn info(&self) -> crate::broker::registry::ChannelInfo {
        crate::broker::registry::ChannelInfo {
            confirm: self.confirm,
            transactional: self.tx.is_some(),
            prefetch_count: self.consumer_prefetch,
            global_prefetch_count: 0,
        }
    }

    /// The peer waits for our answers to its publishes: confirms, or
    /// `tx.commit-ok`.
    pub fn awaits_replies(&self) -> bool {
        self.confirm || self.tx.is_some()
    }

    pub fn discard_pending(&mut self) {
        self.content = Content::Idle;
        self.tx = None;
    }

    /// Reports the batch's routed publishes to the confirm tracker, which
    /// sends one `basic.ack(multiple)` for everything not waiting for the log,
    /// and adds them to the channel's publish counter (one lock per batch).
    /// Returns how many confirms went out.
    pub fn flush_confirms(&mut self, ch: u16, outbox: &crate::queue::sink::Outbox) -> u64 {
        let confirm_due = self.confirm && self.publish_seq != self.confirm_reported;
        if self.unreported[0] == 0 && !confirm_due {
            return 0;
        }
        let [published, returned, dropped] = std::mem::take(&mut self.unreported);
        self.confirm_reported = self.publish_seq;
        let seq = self.publish_seq;
        outbox.with(|st| {
            let crate::queue::sink::OutState { buf, channels, .. } = st;
            match channels.get_mut(ch) {
                Some(d) => {
                    d.counters.publish += published;
                    d.counters.return_unroutable += returned;
                    d.counters.drop_unroutable += dropped;
                    if !confirm_due {
                        return 0;
                    }
                    d.confirms.published = seq;
                    let n = d.confirms.flush(ch, buf);
                    d.counters.confirm += n;
                    n
                }
                None => 0,
            }
        })
    }
}

/// 503 `unimplemented method`, a connection error: what RabbitMQ answers
/// to a method it has no handler for on a channel.
fn unimplemented_method() -> AmqpError {
    AmqpError::command_invalid("unimplemented method")
}

fn ok_or_nowait(nowait: bool, m: AMQPClass) -> Option<AMQPClass> {
    (!nowait).then_some(m)
}

impl Conn {
    fn chan(&mut self, ch: u16) -> &mut Channel {
        // The caller checked the channel is open; a missing entry would be a
        // broker bug, so fall back to a fresh one rather than panic.
        self.channels.get_or_insert_with(ch, Channel::new)
    }

    /// Re-reads this connection's permissions if any changed in the broker.
    fn refresh_access(&mut self) {
        let g = self.broker.access.generation();
        if g != self.access.generation {
            self.access.permission = self.broker.access.get(&self.user, &self.vhost.name);
            self.access.generation = g;
            self.access.publish_ok = None;
        }
    }

    /// RabbitMQ's `check_{configure,write,read}_permitted` on a queue or an
    /// exchange (the default exchange is checked as `amq.default`).
    fn authorize(&mut self, kind: &str, name: &str, access: Access) -> AmqpResult<()> {
        self.refresh_access();
        let name = if kind == "exchange" { checked_exchange_name(name) } else { name };
        if self.access.permission.as_ref().is_some_and(|p| p.allows(access, name)) {
            Ok(())
        } else {
            Err(refused(access, kind, name, &self.vhost.name, &self.user))
        }
    }

    /// The write check of `basic.publish`, remembered for the last exchange.
    fn authorize_publish(&mut self, exchange: &Bytes) -> AmqpResult<()> {
        self.refresh_access();
        if self.access.publish_ok.as_ref() == Some(exchange) {
            return Ok(());
        }
        self.authorize("exchange", std::str::from_utf8(exchange).unwrap_or(""), Access::Write)?;
        self.access.publish_ok = Some(exchange.clone());
        Ok(())
    }

    /// RabbitMQ's `binding_action` checks: write on the destination, read
    /// on the source (left to the default-exchange rule when it is `""`),
    /// and topic read on the binding key for a topic source.
    fn authorize_binding(&mut self, dest_kind: &str, dest: &str, source: &str, key: &str) -> AmqpResult<()> {
        self.authorize(dest_kind, dest, Access::Write)?;
        if dest.is_empty() || source.is_empty() {
            return Ok(());
        }
        self.authorize("exchange", source, Access::Read)?;
        if let Some(x) = self.vhost.exchanges.get(source)
            && x.kind == Kind::Topic
        {
            self.broker.access.check_topic(&self.user, &self.vhost.name, source, key, Access::Read)?;
        }
        Ok(())
    }

    /// Resolves `""` to the channel's last declared queue.
    fn queue_name(&mut self, ch: u16, name: &str) -> AmqpResult<String> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        self.chan(ch).last_queue.clone().ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    /// A queue binding's queue and routing key: `""` for both means the
    /// channel's last declared queue, bound with its own name as the key
    /// (`rabbit_channel:expand_routing_key_shortcut/3`); CR and LF are
    /// dropped from the name, as RabbitMQ's `binding_action` does.
    fn binding_names(&mut self, ch: u16, queue: &str, key: &str) -> AmqpResult<(String, String)> {
        let name = self.queue_name(ch, queue)?;
        let key = if queue.is_empty() && key.is_empty() { name.clone() } else { key.to_string() };
        Ok((strip_cr_lf(&name), key))
    }

    pub(super) fn channel_method(&mut self, ch: u16, payload: Bytes) -> AmqpResult<()> {
        let content = &self.chan(ch).content;
        if !matches!(content, Content::Idle) {
            return Err(content.unexpected());
        }
        // The per-message methods skip amq-protocol.
        if let Some((CLASS_BASIC, id)) = fast::method_ids(&payload) {
            if id == BASIC_PUBLISH {
                let p = fast::parse_publish(&payload).ok_or_else(|| {
                    crate::protocol::cannot_decode(&payload).on(60, 40)
                })?;
                if p.immediate {
                    return Err(AmqpError::not_implemented("immediate=true").on(60, 40));
                }
                self.chan(ch).content = Content::Header(p);
                self.published = true;
                return Ok(());
            }
            if id == 10 && payload.len() >= 8 {
                // amq-protocol drops basic.qos prefetch_size; RabbitMQ refuses non-zero.
                let size = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                if size != 0 {
                    return Err(AmqpError::not_implemented(format!("prefetch_size!=0 ({size})")).on(60, 10));
                }
            }
            if id == BASIC_ACK {
                let a = fast::parse_ack(&payload).ok_or_else(|| {
                    crate::protocol::cannot_decode(&payload).on(60, 80)
                })?;
                return self.settle(ch, a.delivery_tag, a.multiple, Settle::Ack).map_err(|e| e.on(60, 80));
            }
        }
        let m = decode_method(&payload)?;
        let (cid, mid) = (m.get_amqp_class_id(), m.get_amqp_method_id());
        self.method(ch, m).map_err(|e| e.on(cid, mid))
    }

    fn method(&mut self, ch: u16, m: AMQPClass) -> AmqpResult<()> {
        // Any method here may change what management shows of the channel.
        self.info_dirty = true;
        let reply = match m {
            AMQPClass::Channel(c) => self.channel_class(ch, c)?,
            AMQPClass::Exchange(x) => self.exchange_class(x)?,
            AMQPClass::Queue(q) => self.queue_class(ch, q)?,
            AMQPClass::Basic(b) => self.basic_class(ch, b)?,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                let c = self.chan(ch);
                if c.tx.is_some() {
                    return Err(AmqpError::precondition("cannot switch from tx to confirm mode"));
                }
                c.confirm = true;
                ok_or_nowait(
                    s.nowait,
                    AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                )
            }
            AMQPClass::Tx(t) => self.tx_class(ch, t)?,
            AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::Request(_)) => {
                Some(AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(
                    amq_protocol::protocol::access::RequestOk {},
                )))
            }
            // Connection methods on a channel, and methods only a server
            // sends, reach `rabbit_channel:handle_method/3`'s last clause.
            _ => return Err(unimplemented_method()),
        };
        if let Some(r) = reply {
            self.send_method(ch, &r);
        }
        Ok(())
    }

    fn channel_class(&mut self, ch: u16, m: chm::AMQPMethod) -> AmqpResult<Option<AMQPClass>> {
        match m {
            chm::AMQPMethod::Open(_) => Err(AmqpError::channel_error("second 'channel.open' seen")),
            chm::AMQPMethod::Close(_) => {
                self.release_channel(ch);
                self.channels.remove(ch);
                Ok(Some(AMQPClass::Channel(chm::AMQPMethod::CloseOk(chm::CloseOk {}))))
            }
            // close-ok is only awaited on a closing channel (handled before
            // here); on an open one RabbitMQ has no clause for it, nor for
            // flow-ok (it never sends channel.flow).
            chm::AMQPMethod::Flow(f) => {
                if !f.active {
                    return Err(AmqpError::not_implemented("active=false"));
                }
                Ok(Some(AMQPClass::Channel(chm::AMQPMethod::FlowOk(chm::FlowOk { active: true }))))
            }
            _ => Err(unimplemented_method()),
        }
    }

    fn exchange_class(&mut self, m: exchange::AMQPMethod) -> AmqpResult<Option<AMQPClass>> {
        let v = self.vhost.clone();
        match m {
            exchange::AMQPMethod::Declare(d) => {
                let name = &strip_cr_lf(d.exchange.as_str());
                if !d.passive {
                    // The type is checked before the name and permissions.
                    crate::broker::vhost::exchange_kind(d.kind.as_str(), &d.arguments)?;
                }
                if !d.passive && !name.is_empty() {
                    self.authorize("exchange", name, Access::Configure)?;
                    if !v.exchanges.contains_key(name)
                        && let Some(ae) = d.arguments.inner().get("alternate-exchange")
                    {
                        let ae = exchange_arg(ae, "alternate-exchange", &rs("exchange", name, &v.name))?;
                        self.authorize("exchange", name, Access::Read)?;
                        self.authorize("exchange", &ae, Access::Write)?;
                    }
                }
                v.declare_exchange(
                    name,
                    d.kind.as_str(),
                    d.passive,
                    d.durable,
                    d.auto_delete,
                    d.internal,
                    d.arguments,
                )?;
                Ok(ok_or_nowait(
                    d.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
                ))
            }
            exchange::AMQPMethod::Delete(d) => {
                let name = strip_cr_lf(d.exchange.as_str());
                if !name.is_empty() {
                    self.authorize("exchange", &name, Access::Configure)?;
                }
                v.delete_exchange(&name, d.if_unused)?;
                Ok(ok_or_nowait(
                    d.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                ))
            }
            exchange::AMQPMethod::Bind(b) => {
                let (dest, src) = (strip_cr_lf(b.destination.as_str()), strip_cr_lf(b.source.as_str()));
                self.authorize_binding("exchange", &dest, &src, b.routing_key.as_str())?;
                v.bind_exchange(&dest, &src, b.routing_key.as_str(), b.arguments)?;
                Ok(ok_or_nowait(
                    b.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                ))
            }
            exchange::AMQPMethod::Unbind(b) => {
                let (dest, src) = (strip_cr_lf(b.destination.as_str()), strip_cr_lf(b.source.as_str()));
                self.authorize_binding("exchange", &dest, &src, b.routing_key.as_str())?;
                v.unbind_exchange(&dest, &src, b.routing_key.as_str(), &b.arguments)?;
                Ok(ok_or_nowait(
                    b.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                ))
            }
            _ => Err(unimplemented_method()),
        }
    }

    fn queue_class(&mut self, ch: u16, m: qm::AMQPMethod) -> AmqpResult<Option<AMQPClass>> {
        let v = self.vhost.clone();
        match m {
            qm::AMQPMethod::Declare(d) if d.queue.as_str().starts_with(REPLY_TO) => {
                // Lets a server check that a direct reply-to requester is still
                // there. Every declare of these names is passive in effect;
                // the pseudo-queue itself always "exists" with its one
                // consumer (`rabbit_channel:declare_fast_reply_to/1`).
                let name = strip_cr_lf(d.queue.as_str());
                let exists = match name.strip_prefix(REPLY_TO_PREFIX) {
                    Some(token) => v.reply_to.contains_key(token),
                    None => name == REPLY_TO,
                };
                if !exists {
                    return Err(AmqpError::not_found(format!("no {}", rs("queue", &name, &v.name))));
                }
                Ok(ok_or_nowait(
                    d.nowait,
                    AMQPClass::Queue(qm::AMQPMethod::DeclareOk(qm::DeclareOk {
                        queue: short(&name),
                        message_count: 0,
                        consumer_count: 1,
                    })),
                ))
            }
            qm::AMQPMethod::Declare(d) => {
                // A passive declare names its queue: `""` is not the channel's
                // last queue here (RabbitMQ expands it only for bind, unbind,
                // purge, delete, consume and get).
                let given = strip_cr_lf(d.queue.as_str());
                let server_named = !d.passive && given.is_empty();
                let name =
                    if server_named { crate::broker::vhost::generated_name("amq.gen-") } else { given };
                if !d.passive {
                    self.authorize("queue", &name, Access::Configure)?;
                    if !v.queues.contains_key(&name)
                        && let Some(dlx) = d.arguments.inner().get("x-dead-letter-exchange")
                    {
                        let dlx = exchange_arg(dlx, "x-dead-letter-exchange", &rs("queue", &name, &v.name))?;
                        self.authorize("queue", &name, Access::Read)?;
                        self.authorize("exchange", &dlx, Access::Write)?;
                    }
                }
                let (q, created) = v.declare_queue(crate::broker::vhost::QueueDeclare {
                    name: &name,
                    server_named,
                    passive: d.passive,
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments,
                    conn_id: self.id,
                })?;
                if created && q.exclusive_owner.is_some() {
                    self.exclusive_queues.push(q.clone());
                }
                self.chan(ch).last_queue = Some(q.name.clone());
                let (ready, _, consumers, _) = q.counts();
                Ok(ok_or_nowait(
                    d.nowait,
                    AMQPClass::Queue(qm::AMQPMethod::DeclareOk(qm::DeclareOk {
                        queue: short(&q.name),
                        message_count: ready as u32,
                        consumer_count: consumers as u32,
                    })),
                ))
            }
            qm::AMQPMethod::Bind(b) => {
                let (name, key) = self.binding_names(ch, b.queue.as_str(), b.routing_key.as_str())?;
                let x = strip_cr_lf(b.exchange.as_str());
                self.authorize_binding("queue", &name, &x, &key)?;
                v.bind_queue(&name, &x, &key, b.arguments, self.id)?;
                Ok(ok_or_nowait(b.nowait, AMQPClass::Queue(qm::AMQPMethod::BindOk(qm::BindOk {}))))
            }
            qm::AMQPMethod::Unbind(b) => {
                let (name, key) = self.binding_names(ch, b.queue.as_str(), b.routing_key.as_str())?;
                let x = strip_cr_lf(b.exchange.as_str());
                self.authorize_binding("queue", &name, &x, &key)?;
                v.unbind_queue(&name, &x, &key, &b.arguments, self.id)?;
                Ok(Some(AMQPClass::Queue(qm::AMQPMethod::UnbindOk(qm::UnbindOk {}))))
            }
            qm::AMQPMethod::Purge(p) => {
                let name = self.queue_name(ch, p.queue.as_str())?;
                self.authorize("queue", &name, Access::Read)?;
                let q = v.usable_queue(&name, self.id)?;
                let n = q.purge();
                Ok(ok_or_nowait(
                    p.nowait,
                    AMQPClass::Queue(qm::AMQPMethod::PurgeOk(qm::PurgeOk { message_count: n })),
                ))
            }
            qm::AMQPMethod::Delete(d) => {
                let name = strip_cr_lf(&self.queue_name(ch, d.queue.as_str())?);
                self.authorize("queue", &name, Access::Configure)?;
                let outbox = self.outbox.clone();
                let (n, own) =
                    v.delete_queue_from(&name, d.if_unused, d.if_empty, self.id, Some((&outbox, ch)))?;
                self.exclusive_queues.retain(|q| q.name != name);
                // delete-ok first, then this channel's own consumers hear of it.
                if !d.nowait {
                    self.send_method(
                        ch,
                        &AMQPClass::Queue(qm::AMQPMethod::DeleteOk(qm::DeleteOk { message_count: n })),
                    );
                }
                for c in &own {
                    crate::broker::vhost::notify_cancel(c);
                }
                Ok(None)
            }
            _ => Err(unimplemented_method()),
        }
    }

    fn basic_class(&mut self, ch: u16, m: basic::AMQPMethod) -> AmqpResult<Option<AMQPClass>> {
        match m {
            basic::AMQPMethod::Qos(q) => {
                if q.global {
                    let limit = q.prefetch_count as u32;
                    self.outbox.with(|st| {
                        if let Some(d) = st.channels.get_mut(ch) {
                            d.global_limit = limit;
                        }
                    });
                    for queue in self.outbox.consumer_queues() {
                        queue.dispatch();
                    }
                } else {
                    self.chan(ch).consumer_prefetch = q.prefetch_count;
                }
                Ok(Some(AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {}))))
            }
            basic::AMQPMethod::Consume(c) => self.consume(ch, c),
            basic::AMQPMethod::Cancel(c) => {
                let tag = Bytes::copy_from_slice(c.consumer_tag.as_str().as_bytes());
                if self.chan(ch).reply.as_ref().is_some_and(|(_, t)| *t == tag) {
                    self.drop_reply_consumer(ch);
                }
                let entry =
                    self.outbox.with(|st| st.channels.get_mut(ch).and_then(|d| d.consumers.remove(&tag)));
                if let Some(e) = entry
                    && e.queue.remove_consumer(self.id, ch, &tag)
                {
                    self.vhost.remove_queue(&e.queue);
                }
                Ok(ok_or_nowait(
                    c.nowait,
                    AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: c.consumer_tag,
                    })),
                ))
            }
            basic::AMQPMethod::Get(g) => {
                let name = self.queue_name(ch, g.queue.as_str())?;
                self.authorize("queue", &name, Access::Read)?;
                let q = self.vhost.usable_queue(&name, self.id)?;
                if q.get(&self.outbox, ch, g.no_ack) {
                    Ok(None)
                } else {
                    self.broker.counters.get_empty.fetch_add(1, Ordering::Relaxed);
                    self.vhost.msg.get_empty.fetch_add(1, Ordering::Relaxed);
                    self.outbox.with(|st| {
                        if let Some(d) = st.channels.get_mut(ch) {
                            d.counters.get_empty += 1;
                        }
                    });
                    Ok(Some(AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {}))))
                }
            }
            basic::AMQPMethod::Ack(a) => {
                self.settle(ch, a.delivery_tag, a.multiple, Settle::Ack).map(|_| None)
            }
            basic::AMQPMethod::Nack(n) => {
                let kind = if n.requeue { Settle::Requeue } else { Settle::Drop };
                self.settle(ch, n.delivery_tag, n.multiple, kind).map(|_| None)
            }
            basic::AMQPMethod::Reject(r) => {
                let kind = if r.requeue { Settle::Requeue } else { Settle::Drop };
                self.settle(ch, r.delivery_tag, false, kind).map(|_| None)
            }
            basic::AMQPMethod::Recover(r) => {
                if !r.requeue {
                    return Err(AmqpError::not_implemented("requeue=false"));
                }
                // recover-ok goes out before the redeliveries it causes.
                self.send_method(ch, &AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})));
                self.recover(ch);
                Ok(None)
            }
            basic::AMQPMethod::RecoverAsync(r) => {
                if !r.requeue {
                    return Err(AmqpError::not_implemented("requeue=false"));
                }
                self.recover(ch);
                Ok(None)
            }
            _ => Err(unimplemented_method()),
        }
    }

    fn recover(&mut self, ch: u16) {
        let all = self.outbox.with(|st| st.channels.get_mut(ch).map(|d| d.take_all()).unwrap_or_default());
        requeue_all(all);
    }

    fn consume(&mut self, ch: u16, c: basic::Consume) -> AmqpResult<Option<AMQPClass>> {
        if c.queue.as_str() == REPLY_TO {
            return self.consume_reply_to(ch, c);
        }
        let name = self.queue_name(ch, c.queue.as_str())?;
        self.authorize("queue", &name, Access::Read)?;
        let q = self.vhost.usable_queue(&name, self.id)?;
        let tag_str = if c.consumer_tag.as_str().is_empty() {
            crate::broker::vhost::generated_name("amq.ctag-")
        } else {
            c.consumer_tag.to_string()
        };
        let tag = Bytes::from(tag_str.clone().into_bytes());
        let priority = match c.arguments.inner().get("x-priority") {
            None => 0,
            // Any integer type is accepted (`rabbit_amqqueue:check_int_arg/2`);
            // priorities beyond 32 bits order like the 32-bit extremes.
            Some(v) => match as_int(v) {
                Some(p) => p.clamp(i32::MIN as i128, i32::MAX as i128) as i32,
                None => {
                    return Err(AmqpError::precondition(format!(
                        "invalid arg 'x-priority' for {}: \"expected integer, got {}\"",
                        q.resource(),
                        crate::queue::args::type_name(v)
                    )));
                }
            },
        };
        let credit = Arc::new(ConsumerCredit::default());
        credit
            .limit
            .store(if c.no_ack { 0 } else { self.chan(ch).consumer_prefetch as u32 }, Ordering::Relaxed);
        let reused = self
            .outbox
            .with(|st| st.channels.get(ch).map(|d| d.consumers.contains_key(&tag)).unwrap_or(false));
        if reused {
            return Err(AmqpError::not_allowed(format!("attempt to reuse consumer tag '{tag_str}'")));
        }
        let consumer = Consumer {
            tag: tag.clone(),
            outbox: self.outbox.clone(),
            channel: ch,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            priority,
            credit: credit.clone(),
        };
        // consume-ok must reach the client before the first delivery: it is
        // written while the queue is locked, before the queue dispatches.
        let outbox = self.outbox.clone();
        let ok = AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
            consumer_tag: short(&tag_str),
        }));
        let entry = ConsumerEntry { queue: q.clone(), credit, no_ack: c.no_ack };
        let nowait = c.nowait;
        q.add_consumer(consumer, move || {
            outbox.with(|st| {
                if let Some(d) = st.channels.get_mut(ch) {
                    d.consumers.insert(tag, entry);
                }
                if !nowait {
                    crate::protocol::frame::encode_method(&mut st.buf, ch, &ok);
                }
            });
        })?;
        Ok(None)
    }

    /// `basic.consume` on `amq.rabbitmq.reply-to` (direct reply-to).
    fn consume_reply_to(&mut self, ch: u16, c: basic::Consume) -> AmqpResult<Option<AMQPClass>> {
        if !c.no_ack {
            return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
        }
        if self.chan(ch).reply.is_some() {
            return Err(AmqpError::precondition("reply consumer already set"));
        }
        let tag_str = if c.consumer_tag.as_str().is_empty() {
            crate::broker::vhost::generated_name("amq.ctag-")
        } else {
            c.consumer_tag.to_string()
        };
        let tag = Bytes::from(tag_str.clone().into_bytes());
        let token = crate::broker::vhost::generated_name("");
        self.vhost.reply_to.insert(
            token.clone(),
            ReplyTarget { outbox: self.outbox.clone(), channel: ch, consumer_tag: tag.clone() },
        );
        self.chan(ch).reply = Some((token, tag));
        Ok(ok_or_nowait(
            c.nowait,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: short(&tag_str),
            })),
        ))
    }

    /// Forgets the channel's direct reply-to consumer.
    pub(super) fn drop_reply_consumer(&mut self, ch: u16) {
        if let Some((token, _)) = self.channels.get_mut(ch).and_then(|c| c.reply.take()) {
            self.vhost.reply_to.remove(&token);
        }
    }

    /// ack / nack / reject (`multiple` where allowed), or buffered under tx.
    fn settle(&mut self, ch: u16, tag: u64, multiple: bool, kind: Settle) -> AmqpResult<()> {
        if self.chan(ch).tx.is_some() {
            // Validate now (RabbitMQ checks the tag at ack time), apply at commit.
            let known = self.outbox.with(|st| {
                st.channels.get(ch).map(|d| multiple || d.unacked.contains_key(&tag)).unwrap_or(false)
            });
            if !known {
                return Err(AmqpError::precondition(format!("unknown delivery tag {tag}")));
            }
            if let Some(tx) = self.chan(ch).tx.as_mut() {
                tx.settles.push((tag, multiple, kind));
            }
            return Ok(());
        }
        self.apply_settle(ch, tag, multiple, kind)
    }

    fn apply_settle(&mut self, ch: u16, tag: u64, multiple: bool, kind: Settle) -> AmqpResult<()> {
        let taken = self.outbox.with(|st| {
            let d = st.channels.get_mut(ch)?;
            let taken = d.settle(tag, multiple)?;
            if kind == Settle::Ack {
                d.counters.ack += taken.len() as u64;
            }
            Some(taken)
        });
        let Some(taken) = taken else {
            return Err(AmqpError::precondition(format!("unknown delivery tag {tag}")));
        };
        match kind {
            Settle::Requeue => requeue_all(taken),
            Settle::Ack => settle_all(taken),
            Settle::Drop => {
                for u in &taken {
                    if let Some(m) = &u.qm.msg {
                        dead_letter(&self.vhost, &u.queue, m, Reason::Rejected);
                    }
                }
                settle_all(taken)
            }
        }
        // Credit freed on the channel may unblock other queues' consumers.
        if multiple
            || self.outbox.with(|st| st.channels.get(ch).map(|d| d.global_limit != 0).unwrap_or(false))
        {
            for q in self.outbox.consumer_queues() {
                q.dispatch();
            }
        }
        Ok(())
    }

    fn tx_class(&mut self, ch: u16, m: tx::AMQPMethod) -> AmqpResult<Option<AMQPClass>> {
        match m {
            tx::AMQPMethod::Select(_) => {
                let c = self.chan(ch);
                if c.confirm {
                    return Err(AmqpError::precondition("cannot switch from confirm to tx mode"));
                }
                if c.tx.is_none() {
                    c.tx = Some(TxState::default());
                }
                Ok(Some(AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {}))))
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(state) = self.chan(ch).tx.replace(TxState::default()) else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                for p in state.publishes {
                    self.route_and_enqueue(ch, &p.publish, p.msg)?;
                }
                for (tag, multiple, kind) in state.settles {
                    // A tag settled twice inside one transaction is ignored at commit.
                    let _ = self.apply_settle(ch, tag, multiple, kind);
                }
                Ok(Some(AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {}))))
            }
            tx::AMQPMethod::Rollback(_) => {
                let c = self.chan(ch);
                if c.tx.is_none() {
                    return Err(AmqpError::precondition("channel is not transactional"));
                }
                c.tx = Some(TxState::default());
                Ok(Some(AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {}))))
            }
            _ => Err(unimplemented_method()),
        }
    }

    pub(super) fn content_header(&mut self, ch: u16, payload: Bytes) -> AmqpResult<()> {
        let max = self.broker.config.amqp.max_message_size;
        let c = self.chan(ch);
        let publish = match std::mem::replace(&mut c.content, Content::Idle) {
            Content::Header(p) => p,
            other => return Err(other.unexpected()),
        };
        if payload.len() < 14 {
            return Err(AmqpError::frame_error("cannot decode content header").on(CLASS_BASIC, BASIC_PUBLISH));
        }
        let class = u16::from_be_bytes([payload[0], payload[1]]);
        if class != CLASS_BASIC {
            return Err(AmqpError::unexpected_frame(format!(
                "expected content header for class 60, got one for class {class} instead"
            ))
            .on(CLASS_BASIC, BASIC_PUBLISH));
        }
        let mut size_bytes = [0u8; 8];
        size_bytes.copy_from_slice(&payload[4..12]);
        let size = u64::from_be_bytes(size_bytes);
        let properties = payload.slice(12..);
        let scanned = properties::scan(&properties).ok_or_else(|| {
            AmqpError::frame_error("cannot decode content properties").on(CLASS_BASIC, BASIC_PUBLISH)
        })?;
        if size > max {
            return Err(AmqpError::precondition(format!(
                "message size {size} is larger than configured max size {max}"
            ))
            .on(CLASS_BASIC, BASIC_PUBLISH));
        }
        if size == 0 {
            return self.publish_complete(ch, publish, properties, scanned, Bytes::new());
        }
        self.chan(ch).content = Content::Body(Box::new(BodyState {
            publish,
            properties,
            scanned,
            size,
            first: None,
            rest: BytesMut::new(),
        }));
        Ok(())
    }

    pub(super) fn content_body(&mut self, ch: u16, payload: Bytes) -> AmqpResult<()> {
        let c = self.chan(ch);
        if matches!(c.content, Content::Overflowed) {
            return Ok(());
        }
        let Content::Body(state) = &mut c.content else {
            return Err(c.content.unexpected());
        };
        let BodyState { size, first, rest, .. } = &mut **state;
        let have = first.as_ref().map(|b| b.len()).unwrap_or(0) + rest.len();
        let total = have + payload.len();
        if total as u64 > *size {
            c.content = Content::Overflowed;
            return Ok(());
        }
        if first.is_none() && rest.is_empty() {
            *first = Some(payload);
        } else {
            if let Some(f) = first.take() {
                rest.reserve(*size as usize);
                rest.extend_from_slice(&f);
            }
            rest.extend_from_slice(&payload);
        }
        if (total as u64) < *size {
            return Ok(());
        }
        let Content::Body(state) = std::mem::replace(&mut c.content, Content::Idle) else {
            return Ok(());
        };
        let BodyState { publish, properties, scanned, first, rest, .. } = *state;
        let body = first.unwrap_or_else(|| rest.freeze());
        self.publish_complete(ch, publish, properties, scanned, body)
    }

    fn publish_complete(
        &mut self,
        ch: u16,
        p: fast::Publish,
        properties: Bytes,
        scanned: Scanned,
        body: Bytes,
    ) -> AmqpResult<()> {
        let err = |e: AmqpError| e.on(CLASS_BASIC, BASIC_PUBLISH);
        self.authorize_publish(&p.exchange).map_err(err)?;
        let x_name = std::str::from_utf8(&p.exchange).unwrap_or("");
        let x = self.route_cache.exchange(&self.vhost, &p.exchange).map_err(err)?;
        if x.kind == Kind::Topic {
            self.broker
                .access
                .check_topic(
                    &self.user,
                    &self.vhost.name,
                    x_name,
                    std::str::from_utf8(&p.routing_key).unwrap_or(""),
                    Access::Write,
                )
                .map_err(err)?;
        }
        if x.internal {
            return Err(err(AmqpError::access_refused(format!(
                "cannot publish to internal {}",
                rs("exchange", x_name, &self.vhost.name)
            ))));
        }
        let msg = Message::new(p.exchange.clone(), p.routing_key.clone(), properties, body, scanned);
        if let Some(uid) = msg.user_id()
            && uid != self.user.as_bytes()
        {
            return Err(err(AmqpError::precondition(format!(
                "user_id property set to '{}' but authenticated user was '{}'",
                String::from_utf8_lossy(uid),
                self.user
            ))));
        }
        if let Some(e) = msg.expiration() {
            validate_expiration(e).map_err(err)?;
        }
        if let Some(dm) = msg.scanned.delivery_mode
            && dm != 1
            && dm != 2
        {
            return Err(err(AmqpError::precondition(format!(
                "invalid message: {{delivery_mode_unknown,{dm}}}"
            ))));
        }
        let msg = if msg.reply_to() == Some(REPLY_TO.as_bytes()) {
            self.with_reply_token(ch, msg).map_err(err)?
        } else {
            msg
        };
        self.broker.counters.published.fetch_add(1, Ordering::Relaxed);
        let msg = Arc::new(msg);
        let c = self.chan(ch);
        c.unreported[0] += 1;
        if c.confirm {
            c.publish_seq += 1;
        }
        if let Some(tx) = c.tx.as_mut() {
            tx.publishes.push(TxPublish { publish: p, msg });
            return Ok(());
        }
        self.route_and_enqueue(ch, &p, msg).map_err(err)
    }

    /// Rewrites `reply_to = amq.rabbitmq.reply-to` to this channel's reply name.
    fn with_reply_token(&mut self, ch: u16, msg: Message) -> AmqpResult<Message> {
        let Some((token, _)) = self.chan(ch).reply.clone() else {
            return Err(AmqpError::precondition("fast reply consumer does not exist"));
        };
        let props = amq_protocol::protocol::basic::parse_properties(&msg.properties[..])
            .map(|(_, p)| p)
            .map_err(|_| AmqpError::frame_error("cannot decode content properties"))?;
        let props = props.with_reply_to(short(&format!("{REPLY_TO_PREFIX}{token}")));
        let raw =
            cookie_factory::gen_simple(amq_protocol::protocol::basic::gen_properties(&props), Vec::new())
                .map_err(|_| AmqpError::new(code::INTERNAL_ERROR, "cannot encode content properties"))?;
        let raw = Bytes::from(raw);
        let scanned = properties::scan(&raw)
            .ok_or_else(|| AmqpError::new(code::INTERNAL_ERROR, "cannot scan content properties"))?;
        Ok(Message::new(msg.exchange, msg.routing_key, raw, msg.body, scanned))
    }

    /// A publish to `amq.rabbitmq.reply-to.<token>` via the default exchange:
    /// straight to the requester's channel. Returns false if nobody is there.
    fn reply_direct(&self, msg: &Message) -> bool {
        let key = String::from_utf8_lossy(&msg.routing_key);
        let Some(token) = key.strip_prefix(REPLY_TO_PREFIX) else {
            return false;
        };
        let Some(target) = self.vhost.reply_to.get(token).map(|t| t.clone()) else {
            return false;
        };
        target.outbox.deliver_direct(target.channel, &target.consumer_tag, msg)
    }

    fn route_and_enqueue(&mut self, ch: u16, p: &fast::Publish, msg: Arc<Message>) -> AmqpResult<()> {
        let x_name = std::str::from_utf8(&p.exchange).unwrap_or("");
        let x = self.route_cache.exchange(&self.vhost, &p.exchange)?;
        let headers = msg.headers();
        let mut extra = Vec::new();
        if let Some(h) = &headers {
            extra = message::cc_bcc(h).map_err(|name| {
                AmqpError::precondition(format!(
                    "invalid message: {{unacceptable_type_in_header,\"{name}\",longstr}}"
                ))
            })?;
        }
        // BCC routes like CC but is stripped before the message is enqueued.
        let msg = match &headers {
            Some(h) if h.inner().contains_key("BCC") => {
                msg.without_header("BCC").map(Arc::new).unwrap_or(msg)
            }
            _ => msg,
        };
        let mut keys: Vec<&[u8]> = Vec::with_capacity(1 + extra.len());
        keys.push(&p.routing_key);
        keys.extend(extra.iter().map(|k| &k[..]));
        let mut routed = std::mem::take(&mut self.chan(ch).routed);
        routed.clear();
        // A delayed exchange holds the message for its x-delay first (in its
        // delay queue); it is routed by the exchange when the delay is over.
        let mut delay: Option<u64> = None;
        if x.delayed
            && let Some(d) = headers.as_ref().and_then(|h| h.inner().get("x-delay")).and_then(as_int)
            && d > 0
            && let Ok(dq) = self.vhost.queue(&x.delay_queue_name())
        {
            delay = Some(d.min(u64::MAX as i128) as u64);
            routed.push(dq);
        }
        let direct = delay.is_none()
            && x_name.is_empty()
            && p.routing_key.starts_with(REPLY_TO_PREFIX.as_bytes())
            && self.reply_direct(&msg);
        if !direct && delay.is_none() {
            // The default exchange routes to the queue its key names: the
            // last one reached is remembered (a found queue ends routing, so
            // no alternate exchange is consulted either way).
            let remembered = if x_name.is_empty() && extra.is_empty() {
                self.route_cache.default_route(&p.routing_key)
            } else {
                None
            };
            match remembered {
                Some(q) => routed.push(q),
                None => {
                    self.vhost.route(&x, &keys, headers.as_ref(), &mut routed);
                    if x_name.is_empty()
                        && let [q] = &routed[..]
                        && q.name.as_bytes() == &p.routing_key[..]
                    {
                        self.route_cache.remember_default_route(q);
                    }
                }
            }
        }
        x.publish_in.fetch_add(1, Ordering::Relaxed);
        if !routed.is_empty() {
            x.publish_out.fetch_add(1, Ordering::Relaxed);
        }
        // A direct reply-to delivery reaches no queue, so it counts as
        // unroutable, as in RabbitMQ 3.13: with `mandatory` it also comes
        // back in a `basic.return` (`rabbit_exchange:route` yields only a
        // virtual queue that `lookup_many` drops; rabbitmq-server#6124).
        if routed.is_empty() {
            if p.mandatory {
                self.broker.counters.unroutable_returned.fetch_add(1, Ordering::Relaxed);
                self.vhost.msg.return_unroutable.fetch_add(1, Ordering::Relaxed);
                self.chan(ch).unreported[1] += 1;
                let m = msg.clone();
                self.outbox.send(|b| {
                    fast::encode_return(b, ch, code::NO_ROUTE, "NO_ROUTE", &m.exchange, &m.routing_key);
                    crate::protocol::frame::encode_content_header(b, ch, m.body_size(), &m.properties);
                    crate::protocol::frame::encode_body(b, ch, &m.body, self.frame_max);
                });
            } else {
                self.broker.counters.unroutable_dropped.fetch_add(1, Ordering::Relaxed);
                self.vhost.msg.drop_unroutable.fetch_add(1, Ordering::Relaxed);
                self.chan(ch).unreported[2] += 1;
            }
        }
        // A persistent message in confirm mode may wait for the log: its
        // sequence number is registered before any queue can append it.
        let (confirm, seq) = {
            let c = self.chan(ch);
            (c.confirm, c.publish_seq)
        };
        let waiter: Option<Arc<dyn Durable>> = if confirm && msg.persistent() && !routed.is_empty() {
            self.outbox.with(|st| {
                if let Some(d) = st.channels.get_mut(ch) {
                    d.confirms.waiting.push_back(seq);
                }
            });
            Some(Arc::new(ConfirmWaiter::new(self.outbox.clone(), ch, seq)))
        } else {
            None
        };
        let mut rejected = false;
        for q in routed.drain(..) {
            // x-overflow reject-publish: the publish is nacked (if any queue refused).
            rejected |= !q.publish_with_ttl(msg.clone(), waiter.as_ref(), delay);
        }
        if rejected && confirm {
            self.outbox.with(|st| {
                if let Some(d) = st.channels.get_mut(ch) {
                    d.confirms.failed.insert(seq);
                }
            });
        }
        if let Some(w) = waiter {
            // Routing is over: release the channel's hold (confirms that
            // became ready go out with the end-of-batch flush).
            w.done(true);
        }
        self.chan(ch).routed = routed;
        Ok(())
    }
}

/// Deliveries settled without requeue: one call per queue.
fn settle_all(taken: Vec<Unacked>) {
    let mut by_queue: Vec<(Arc<Queue>, Vec<crate::queue::ready::QueuedMessage>)> = Vec::new();
    for u in taken {
        match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, v)) => v.push(u.qm),
            None => by_queue.push((u.queue, vec![u.qm])),
        }
    }
    for (q, msgs) in by_queue {
        q.settled(&msgs);
    }
}

/// RabbitMQ's check of the `expiration` property (`rabbit_basic:parse_expiration`).
fn validate_expiration(raw: &[u8]) -> AmqpResult<()> {
    message::parse_expiration(raw).map(|_| ()).map_err(|why| {
        let text = format!("invalid expiration '{}': ", String::from_utf8_lossy(raw));
        let why = crate::error::erl_pretty_pair(text.chars().count(), &why);
        AmqpError::precondition(format!("{text}{why}"))
    })
}

/// A queue or exchange name with CR and LF removed, as RabbitMQ's
/// `rabbit_channel:strip_cr_lf/1` does for declare, delete, bind and unbind.
fn strip_cr_lf(name: &str) -> String {
    name.replace(['\r', '\n'], "")
}

/// An argument naming an exchange (a queue's dead-letter exchange, an
/// exchange's alternate), checked as a new queue's or exchange's is in
/// RabbitMQ (`rabbit_misc:r_arg/4`): it must be a string.
fn exchange_arg(v: &crate::protocol::AMQPValue, key: &str, owner: &str) -> AmqpResult<String> {
    args::as_str(v).ok_or_else(|| {
        AmqpError::precondition(format!("invalid type '{}' for arg '{key}' in {owner}", args::type_name(v)))
    })
}
