#!/usr/bin/env python3
"""Differential AMQP probe: RabbitMQ (5672) vs Warren (5674).

Usage: python3 probe.py [substring-of-scenario-name ...]  (or run.sh)
Env: RABBIT_PORT (5672), WARREN_PORT (5674), RESULTS (results file,
default /tmp/differential-results.json)
Writes every observation of both brokers to RESULTS and prints the
differences. Needs pika (its frame codec): tests/interop/.venv has it.
"""
import json
import os
import re
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from amqpmini import Connection, T, spec  # noqa: E402

BROKERS = [('rabbit', int(os.environ.get('RABBIT_PORT', 5672))),
           ('warren', int(os.environ.get('WARREN_PORT', 5674)))]
RUN = '%05d' % (int(time.time() * 10) % 100000)
NOW = time.time()
SCENARIOS = []


def scenario(fn):
    SCENARIOS.append(fn)
    return fn


class ScenarioTimeout(Exception):
    pass


class Ctx:
    def __init__(self, port, scen):
        self.port, self.scen = port, scen
        self.conns = []
        self.rec = []
        self.queues, self.exchanges = [], []
        self.main = None

    def conn(self, **kw):
        c = Connection(self.port, **kw)
        self.conns.append(c)
        return c

    def fresh(self, conn=None):
        """A new channel on `conn` (or on the scenario's main connection),
        reconnecting if that connection was closed."""
        if conn is not None:
            return conn.channel()
        if self.main is None or self.main.closed:
            self.main = self.conn()
        return self.main.channel()

    def q(self, suffix):
        n = 'dp.%s.%s.%s' % (RUN, self.scen, suffix)
        self.queues.append(n)
        return n

    def x(self, suffix):
        n = 'dpx.%s.%s.%s' % (RUN, self.scen, suffix)
        self.exchanges.append(n)
        return n

    def r(self, label, value):
        self.rec.append([label, value])
        return value

    def cleanup(self):
        for c in self.conns:
            try:
                c.close()
            except Exception:
                pass
        try:
            c = Connection(self.port)
            ch = c.channel()
            for q in self.queues:
                r = ch.qdelete(q)
                if 'CLOSE' in r:
                    ch = c.channel() if not c.closed else Connection(self.port).channel()
                    c = ch.conn
            for x in self.exchanges:
                r = ch.xdelete(x)
                if 'CLOSE' in r:
                    ch = c.channel() if not c.closed else Connection(self.port).channel()
                    c = ch.conn
            c.close()
        except Exception:
            pass


# ---------------------------------------------------------------- normalize
_GEN = re.compile(r'amq\.(gen|ctag)-([A-Za-z0-9_\-]+)')


def norm(v):
    if isinstance(v, str):
        v = v.replace('dp.%s.' % RUN, 'dp.').replace('dpx.%s.' % RUN, 'dpx.').replace(RUN, '<RUN>')
        v = _GEN.sub(lambda m: 'amq.%s-<%d chars>' % (m.group(1), len(m.group(2))), v)
        v = re.sub(r'amq\.rabbitmq\.reply-to\.[A-Za-z0-9_.+/=\-]+', 'amq.rabbitmq.reply-to.<id>', v)
        return v
    if isinstance(v, list):
        if len(v) == 2 and v[0] == 'T' and isinstance(v[1], int) and abs(v[1] - NOW) < 86400:
            return ['T', '<now>']
        return [norm(x) for x in v]
    if isinstance(v, dict):
        return {norm(k): norm(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [norm(x) for x in v]
    return v


def to_typed(tbl):
    """Tagged decoded table -> value that re-encodes with the same wire types."""
    def val(tv):
        tag, v = tv
        if tag == 'F':
            return to_typed(v)
        if tag == 'A':
            return [val(x) for x in v]
        if tag == 'V':
            return None
        if tag == 't':
            return bool(v)
        if tag == 'x':
            return bytes.fromhex(v[4:])
        if tag == 'D':
            return T('D', tuple(v))
        return T(tag, v)
    return {k: val(v) for k, v in tbl.items()}


def hdr(ev):
    """headers table of a delivered/get message event."""
    return (ev.get('props') or {}).get('headers')


def bodies(evs):
    return [e.get('body') for e in evs if e.get('method') in ('Basic.Deliver', 'Basic.GetOk')]


def brief(ev):
    """Compact form of an event list: method + salient fields."""
    out = []
    for e in ev:
        m = e.get('method') or ('CLOSE:' + e['CLOSE'] if 'CLOSE' in e else None)
        if m == 'Basic.Deliver':
            out.append(['deliver', e['consumer_tag'], e['delivery_tag'], e['redelivered'],
                        e['body']])
        elif m == 'Basic.Ack' or m == 'Basic.Nack':
            out.append([m, e['delivery_tag'], e['multiple']] + (
                [e['requeue']] if m == 'Basic.Nack' else []))
        elif m == 'Basic.Return':
            out.append(['return', e['reply_code'], e['reply_text'], e['exchange'],
                        e['routing_key'], e['body']])
        else:
            out.append(e)
    return out


def expand_confirms(evs):
    """Confirms are timing dependent when multiple=true; expand to per-tag."""
    acked, nacked = [], []
    last = 0
    for e in evs:
        if e.get('method') in ('Basic.Ack', 'Basic.Nack'):
            tgt = acked if e['method'] == 'Basic.Ack' else nacked
            if e['multiple']:
                tgt.extend(range(last + 1, e['delivery_tag'] + 1))
            else:
                tgt.append(e['delivery_tag'])
            last = max(last, e['delivery_tag'])
    return {'acked': sorted(set(acked)), 'nacked': sorted(set(nacked))}


def return_precedes_ack(evs, seq_of_body):
    out = {}
    for i, e in enumerate(evs):
        if e.get('method') == 'Basic.Return':
            seq = seq_of_body[e['body']]
            j = next((k for k, a in enumerate(evs) if a.get('method') in ('Basic.Ack', 'Basic.Nack')
                      and (a['delivery_tag'] == seq or (a['multiple'] and a['delivery_tag'] >= seq))),
                     None)
            out[e['body']] = j is not None and i < j
    return out


# ================================================================ scenarios
@scenario
def s00_handshake(ctx):
    c = ctx.conn()
    sp = c.server_properties
    ctx.r('capabilities', sorted((k, v) for k, v in sp.get('capabilities', {}).items()))
    ctx.r('server_property_keys', sorted(sp.keys()))
    ctx.r('product', sp.get('product').decode() if isinstance(sp.get('product'), bytes)
          else sp.get('product'))
    ctx.r('version_major_minor', [c.start.version_major, c.start.version_minor])
    ctx.r('mechanisms', c.start.mechanisms.decode())
    ctx.r('locales', c.start.locales.decode())
    ctx.r('tune', c.tune)
    ch = c.channel()
    ctx.r('channel_open_ok', ch.open_result)
    ctx.r('channel_close_ok', ch.close())
    # open the same channel number again after close: allowed
    ctx.r('reopen_same_number', c.channel(1).open_result)
    # wrong password
    try:
        Connection(ctx.port, password='wrong')
        ctx.r('bad_password', 'connected?!')
    except Exception as e:
        ctx.r('bad_password', str(e)[:300])
    try:
        Connection(ctx.port, vhost='/no-such-vhost-dp')
        ctx.r('bad_vhost', 'connected?!')
    except Exception as e:
        ctx.r('bad_vhost', str(e)[:300])


@scenario
def s01_missing_entities(ctx):
    q, x = ctx.q('q'), ctx.x('x')
    mq, mx = ctx.q('missing'), ctx.x('missing')
    ch = ctx.fresh()
    ctx.r('setup', [ch.qdecl(q), ch.xdecl(x)])
    ctx.r('qdecl_passive_missing', ctx.fresh().qdecl(mq, passive=True))
    ctx.r('xdecl_passive_missing', ctx.fresh().xdecl(mx, passive=True))
    ctx.r('xdecl_unknown_type', ctx.fresh().xdecl(ctx.x('bogustype'), type='x-bogus'))
    ctx.r('xdecl_passive_existing_other_type', ctx.fresh().xdecl(x, type='fanout', passive=True))
    ctx.r('xdecl_passive_unknown_type_existing', ctx.fresh().xdecl(x, type='bogus', passive=True))
    ch = ctx.fresh()
    ch.pub(mx, 'rk', 'b')
    ctx.r('publish_missing_exchange', ch.ping())
    ch = ctx.fresh()
    ch.pub(mx, 'rk', 'b', mandatory=True)
    ctx.r('publish_missing_exchange_mandatory', ch.ping())
    ctx.r('bind_missing_exchange', ctx.fresh().bind(q, mx, 'k'))
    ctx.r('bind_missing_queue', ctx.fresh().bind(mq, x, 'k'))
    ctx.r('bind_both_missing', ctx.fresh().bind(mq, mx, 'k'))
    ctx.r('unbind_missing_exchange', ctx.fresh().unbind(q, mx, 'k'))
    ctx.r('unbind_missing_queue', ctx.fresh().unbind(mq, x, 'k'))
    ctx.r('unbind_nonexistent_binding', ctx.fresh().unbind(q, x, 'nokey'))
    ctx.r('xbind_missing_source', ctx.fresh().xbind(x, mx, 'k'))
    ctx.r('xbind_missing_dest', ctx.fresh().xbind(mx, x, 'k'))
    ctx.r('xunbind_missing', ctx.fresh().xunbind(mx, x, 'k'))
    ctx.r('xunbind_nonexistent_binding', ctx.fresh().xunbind('amq.fanout', x, 'k'))
    ctx.r('qdelete_missing', ctx.fresh().qdelete(mq))
    ctx.r('xdelete_missing', ctx.fresh().xdelete(mx))
    ctx.r('purge_missing', ctx.fresh().purge(mq))
    ctx.r('get_missing', ctx.fresh().get(mq))
    ctx.r('consume_missing', ctx.fresh().consume(mq))
    # reserved names / default exchange
    ctx.r('xdecl_amq_prefix', ctx.fresh().xdecl('amq.dp-%s' % RUN))
    ctx.r('xdecl_amq_prefix_passive', ctx.fresh().xdecl('amq.dp-%s' % RUN, passive=True))
    ctx.r('qdecl_amq_prefix', ctx.fresh().qdecl('amq.dp-%s' % RUN))
    ctx.r('qdecl_amq_prefix_passive', ctx.fresh().qdecl('amq.dp-%s' % RUN, passive=True))
    ctx.r('xdecl_default_passive', ctx.fresh().xdecl('', passive=True))
    ctx.r('xdecl_default', ctx.fresh().xdecl(''))
    ctx.r('xdecl_amq_direct_same', ctx.fresh().xdecl('amq.direct', durable=True))
    ctx.r('xdecl_amq_direct_other_type', ctx.fresh().xdecl('amq.direct', type='fanout',
                                                            durable=True))
    ctx.r('bind_to_default_exchange', ctx.fresh().bind(q, '', q))
    ctx.r('unbind_from_default_exchange', ctx.fresh().unbind(q, '', q))
    ctx.r('xdelete_default', ctx.fresh().xdelete(''))
    ctx.r('xdelete_amq_direct', ctx.fresh().xdelete('amq.direct'))
    ctx.r('xbind_default_as_source', ctx.fresh().xbind(x, '', 'k'))
    ctx.r('xbind_default_as_dest', ctx.fresh().xbind('', x, 'k'))
    ch = ctx.fresh()
    ch.confirm()
    ch.pub('amq.default', q, 'via-amq.default', mandatory=True)
    ctx.r('publish_amq_default', [brief(ch.events(0.4)), ch.get(q, no_ack=True).get('body')])


BAD_ARGS = [
    ('max_length_neg', {'x-max-length': -1}),
    ('max_length_str', {'x-max-length': 'ten'}),
    ('max_length_bytes_neg', {'x-max-length-bytes': -5}),
    ('message_ttl_str', {'x-message-ttl': '1000'}),
    ('message_ttl_neg', {'x-message-ttl': -1}),
    ('message_ttl_double', {'x-message-ttl': 1.5}),
    ('message_ttl_huge', {'x-message-ttl': T('l', 2 ** 40)}),
    ('message_ttl_10y', {'x-message-ttl': T('l', 315360000000)}),
    ('message_ttl_10y_plus_1', {'x-message-ttl': T('l', 315360000001)}),
    ('expires_10y_plus_1', {'x-expires': T('l', 315360000001)}),
    ('expires_0', {'x-expires': 0}),
    ('expires_neg', {'x-expires': -10}),
    ('expires_str', {'x-expires': 'soon'}),
    ('max_priority_300', {'x-max-priority': 300}),
    ('max_priority_256', {'x-max-priority': 256}),
    ('max_priority_255', {'x-max-priority': 255}),
    ('max_priority_0', {'x-max-priority': 0}),
    ('max_priority_neg', {'x-max-priority': -1}),
    ('max_priority_str', {'x-max-priority': '5'}),
    ('max_priority_byte', {'x-max-priority': T('b', 5)}),
    ('overflow_bogus', {'x-overflow': 'bogus'}),
    ('overflow_int', {'x-overflow': 1}),
    ('overflow_reject_publish_dlx', {'x-overflow': 'reject-publish-dlx'}),
    ('queue_mode_bogus', {'x-queue-mode': 'bogus'}),
    ('queue_mode_lazy', {'x-queue-mode': 'lazy'}),
    ('sac_yes', {'x-single-active-consumer': 'yes'}),
    ('sac_int', {'x-single-active-consumer': 1}),
    ('sac_true', {'x-single-active-consumer': True}),
    ('dlrk_without_dlx', {'x-dead-letter-routing-key': 'k'}),
    ('dlx_int', {'x-dead-letter-exchange': 5}),
    ('dlx_missing_exchange', {'x-dead-letter-exchange': 'no-such-dlx-dp'}),
    ('queue_type_bogus', {'x-queue-type': 'bogus'}),
    ('queue_type_classic', {'x-queue-type': 'classic'}),
    ('queue_type_int', {'x-queue-type': 7}),
    ('unknown_arg', {'x-dp-unknown': 1, 'foo': 'bar'}),
    ('max_length_long', {'x-max-length': T('l', 5)}),
    ('max_length_short', {'x-max-length': T('s', 5)}),
    ('max_length_ubyte', {'x-max-length': T('B', 5)}),
    ('max_length_double', {'x-max-length': 5.0}),
    ('max_length_decimal', {'x-max-length': T('D', (0, 5))}),
    ('delivery_limit_classic', {'x-delivery-limit': 3}),
    ('max_age_classic', {'x-max-age': '1D'}),
    ('queue_leader_locator_bogus', {'x-queue-leader-locator': 'bogus'}),
    ('queue_master_locator_bogus', {'x-queue-master-locator': 'bogus'}),
    ('ha_policy_arg', {'x-ha-policy': 'all'}),
]


@scenario
def s02_bad_queue_args(ctx):
    for label, args in BAD_ARGS:
        ch = ctx.fresh()
        r = ch.qdecl(ctx.q(label), args=args)
        ctx.r(label, r)
    # quorum / stream with flags they do not accept
    ctx.r('quorum_non_durable', ctx.fresh().qdecl(ctx.q('qq-nd'), args={'x-queue-type': 'quorum'}))
    ctx.r('quorum_exclusive', ctx.fresh().qdecl(ctx.q('qq-ex'), durable=True, exclusive=True,
                                                args={'x-queue-type': 'quorum'}))
    ctx.r('stream_non_durable', ctx.fresh().qdecl(ctx.q('st-nd'),
                                                  args={'x-queue-type': 'stream'}))


@scenario
def s03_redeclare(ctx):
    q = ctx.q('plain')
    ch = ctx.fresh()
    ctx.r('declare', ch.qdecl(q))
    for label, kw in [('durable', dict(durable=True)), ('auto_delete', dict(auto_delete=True)),
                      ('exclusive', dict(exclusive=True)),
                      ('passive_durable', dict(passive=True, durable=True)),
                      ('passive_args', dict(passive=True, args={'x-message-ttl': 5})),
                      ('same', {})]:
        ctx.r('redeclare_' + label, ctx.fresh().qdecl(q, **kw))
    q2 = ctx.q('ttl')
    ctx.r('declare_ttl1000', ctx.fresh().qdecl(q2, args={'x-message-ttl': 1000}))
    for label, args in [('ttl2000', {'x-message-ttl': 2000}), ('no_args', None),
                        ('ttl1000_long', {'x-message-ttl': T('l', 1000)}),
                        ('ttl1000_short', {'x-message-ttl': T('s', 1000)}),
                        ('ttl1000_str', {'x-message-ttl': '1000'}),
                        ('ttl1000_plus_unknown', {'x-message-ttl': 1000, 'foo': 1}),
                        ('ttl1000_plus_maxlen', {'x-message-ttl': 1000, 'x-max-length': 5}),
                        ('ttl1000_same', {'x-message-ttl': 1000})]:
        ctx.r('redeclare_' + label, ctx.fresh().qdecl(q2, args=args))
    q3 = ctx.q('noargs')
    ctx.r('declare_noargs', ctx.fresh().qdecl(q3))
    ctx.r('redeclare_noargs_with_ttl', ctx.fresh().qdecl(q3, args={'x-message-ttl': 1000}))
    ctx.r('redeclare_noargs_with_unknown', ctx.fresh().qdecl(q3, args={'foo': 1}))
    ctx.r('redeclare_noargs_with_dlx', ctx.fresh().qdecl(q3, args={'x-dead-letter-exchange': 'a'}))
    ctx.r('redeclare_noargs_with_qtype_classic',
          ctx.fresh().qdecl(q3, args={'x-queue-type': 'classic'}))
    q4 = ctx.q('durable')
    ctx.r('declare_durable', ctx.fresh().qdecl(q4, durable=True))
    ctx.r('redeclare_durable_as_transient', ctx.fresh().qdecl(q4))
    # exclusive queue redeclared as non-exclusive by the owner
    c = ctx.conn()
    q5 = ctx.q('excl')
    ctx.r('declare_exclusive', c.channel().qdecl(q5, exclusive=True))
    ctx.r('owner_redeclare_non_exclusive', c.channel().qdecl(q5))
    ctx.r('owner_redeclare_exclusive', c.channel().qdecl(q5, exclusive=True))
    # exchanges
    x = ctx.x('direct')
    ctx.r('xdeclare', ctx.fresh().xdecl(x))
    for label, kw in [('type_fanout', dict(type='fanout')), ('durable', dict(durable=True)),
                      ('auto_delete', dict(auto_delete=True)), ('internal', dict(internal=True)),
                      ('args_ae', dict(args={'alternate-exchange': 'foo'})),
                      ('args_unknown', dict(args={'foo': 'bar'})),
                      ('passive_other_type', dict(type='topic', passive=True)),
                      ('same', {})]:
        ctx.r('xredeclare_' + label, ctx.fresh().xdecl(x, **kw))
    x2 = ctx.x('ae')
    ctx.r('xdeclare_with_ae', ctx.fresh().xdecl(x2, args={'alternate-exchange': 'foo'}))
    ctx.r('xredeclare_other_ae', ctx.fresh().xdecl(x2, args={'alternate-exchange': 'bar'}))
    ctx.r('xredeclare_no_args', ctx.fresh().xdecl(x2))


def fill(ch, q, n, prefix='m', **props):
    for i in range(1, n + 1):
        ch.pub('', q, '%s%d' % (prefix, i), **props)


@scenario
def s04_acks(ctx):
    def fresh_q(label, n):
        q = ctx.q(label)
        ch = ctx.fresh()
        ch.qdecl(q)
        fill(ch, q, n)
        ch.ping()
        return q, ctx.fresh()

    def gets(ch, q, n, no_ack=False):
        return [[g.get('body'), g.get('redelivered'), g.get('delivery_tag')]
                for g in [ch.get(q, no_ack) for _ in range(n)]]

    def state(q):
        c = ctx.fresh()
        return [c.qdecl(q, passive=True).get('message_count'), gets(c, q, 8, True)]

    ch = ctx.fresh()
    ch.ack(99)
    ctx.r('ack_unknown_tag', ch.ping())
    q, ch = fresh_q('twice', 2)
    ctx.r('twice_get', gets(ch, q, 1))
    ch.ack(1)
    ctx.r('ack_first_time', ch.ping())
    ch.ack(1)
    ctx.r('ack_twice', ch.ping())
    ctx.r('ack_twice_state', state(q))
    ch = ctx.fresh()
    ch.nack(42)
    ctx.r('nack_unknown_tag', ch.ping())
    ch = ctx.fresh()
    ch.reject(42)
    ctx.r('reject_unknown_tag', ch.ping())
    ch = ctx.fresh()
    ch.ack(0, multiple=True)
    ctx.r('ack_multiple_0_nothing_outstanding', ch.ping())
    ch = ctx.fresh()
    ch.nack(0, multiple=True)
    ctx.r('nack_multiple_0_nothing_outstanding', ch.ping())
    ch = ctx.fresh()
    ch.ack(0, multiple=False)
    ctx.r('ack_single_0_nothing_outstanding', ch.ping())
    q, ch = fresh_q('single0', 2)
    gets(ch, q, 2)
    ch.ack(0, multiple=False)
    ctx.r('ack_single_0_with_outstanding', ch.ping())
    ctx.r('ack_single_0_with_outstanding_state', state(q))
    q, ch = fresh_q('above', 3)
    gets(ch, q, 2)
    ch.ack(5, multiple=True)
    ctx.r('ack_multiple_above_last', ch.ping())
    ctx.r('ack_multiple_above_last_state', state(q))
    q, ch = fresh_q('nackabove', 3)
    gets(ch, q, 2)
    ch.nack(5, multiple=True, requeue=True)
    ctx.r('nack_multiple_above_last', ch.ping())
    ctx.r('nack_multiple_above_last_state', state(q))
    q, ch = fresh_q('below', 4)
    gets(ch, q, 3)
    ch.ack(2)
    ch.ack(1, multiple=True)
    ctx.r('ack_multiple_already_acked_tag_below_outstanding', ch.ping())
    ctx.r('ack_multiple_already_acked_tag_below_outstanding_state', state(q))
    q, ch = fresh_q('gap', 4)
    gets(ch, q, 4)
    ch.ack(2)
    ch.ack(3, multiple=True)
    ctx.r('ack_multiple_across_gap', ch.ping())
    ctx.r('ack_multiple_across_gap_state', state(q))
    q, ch = fresh_q('all0', 4)
    gets(ch, q, 2)
    ch.ack(0, multiple=True)
    ctx.r('ack_multiple_0_with_outstanding', ch.ping())
    ctx.r('ack_multiple_0_with_outstanding_state', state(q))
    q, ch = fresh_q('nack0', 4)
    gets(ch, q, 2)
    ch.nack(0, multiple=True, requeue=True)
    ctx.r('nack_multiple_0_requeue', ch.ping())
    ctx.r('nack_multiple_0_requeue_state', state(q))
    q, ch = fresh_q('rejmulti', 3)
    gets(ch, q, 3)
    ch.nack(2, multiple=True, requeue=True)
    ctx.r('nack_multiple_2_requeue', ch.ping())
    ctx.r('nack_multiple_2_requeue_state_then_ack3', [state(q)])
    # ack on a channel consuming with no_ack
    q2, ch = fresh_q('noack', 2)
    ch.consume(q2, 'c', no_ack=True)
    ctx.r('noack_deliveries', brief(ch.events(0.3)))
    ch.ack(1)
    ctx.r('ack_in_noack_consume', ch.ping())
    # ack a tag that belongs to another channel
    q3 = ctx.q('other')
    c = ctx.conn()
    a, b = c.channel(), c.channel()
    a.qdecl(q3)
    fill(a, q3, 1)
    a.get(q3)
    b.ack(1)
    ctx.r('ack_tag_of_other_channel', [b.ping(), a.ping()])
    # reject after the tag was already acked via multiple
    q, ch = fresh_q('rejafter', 2)
    gets(ch, q, 2)
    ch.ack(2, multiple=True)
    ch.reject(1, requeue=False)
    ctx.r('reject_after_multiple_ack', ch.ping())
    # delivery tags after a get-empty / after no-ack get
    q, ch = fresh_q('tags', 2)
    ctx.r('tags_noack_then_ack', gets(ch, q, 1, True) + gets(ch, q, 2))
    # ack with multiple=true on the latest tag when earlier ones were no-ack
    ch.ack(2, multiple=True)
    ctx.r('ack_multiple_over_noack_tag', ch.ping())


@scenario
def s05_consumers(ctx):
    q = ctx.q('q')
    ch = ctx.fresh()
    ch.qdecl(q)
    ctx.r('consume_tag_t1', ch.consume(q, 't1'))
    ctx.r('consume_reuse_tag_same_channel', ch.consume(q, 't1'))
    ctx.r('after_reuse_ping', ch.ping())
    ch = ctx.fresh()
    ctx.r('consume_again_other_channel_same_tag', ch.consume(q, 't1'))
    ctx.r('exclusive_consume_when_consumer_exists', ctx.fresh().consume(q, 'ex', exclusive=True))
    q2 = ctx.q('excl-consumer')
    ch = ctx.fresh()
    ch.qdecl(q2)
    ctx.r('exclusive_consume', ch.consume(q2, 'ex1', exclusive=True))
    ctx.r('consume_when_exclusive_consumer', ctx.fresh().consume(q2, 'other'))
    ctx.r('exclusive_consume_when_exclusive_consumer', ctx.fresh().consume(q2, 'o2',
                                                                           exclusive=True))
    ch2 = ctx.fresh()
    fill(ch2, q2, 1)
    ctx.r('get_when_exclusive_consumer', ch2.get(q2))
    ctx.r('exclusive_consumer_events', brief(ch.events(0.2)))
    ctx.r('passive_counts_excl_consumer', ch2.qdecl(q2, passive=True))
    ctx.r('cancel_unknown_tag', ctx.fresh().cancel('nope'))
    ch = ctx.fresh()
    ctx.r('cancel_twice', [ch.consume(q, 'twice'), ch.cancel('twice'), ch.cancel('twice')])
    # consumer_count / server tag shape
    ch = ctx.fresh()
    r = ch.consume(q)
    ctx.r('server_generated_tag', r)
    ctx.r('passive_consumer_count', ctx.fresh().qdecl(q, passive=True))
    # queue deleted while consumed (other channel)
    q3 = ctx.q('deleted')
    c1 = ctx.conn()
    a = c1.channel()
    a.qdecl(q3)
    fill(a, q3, 2)
    a.qos(1)
    a.consume(q3, 'victim')
    ctx.r('victim_initial', brief(a.events(0.3)))
    ctx.r('delete_consumed_queue_from_other_channel', ctx.fresh().qdelete(q3))
    ctx.r('victim_events_after_delete', brief(a.events(0.5)))
    a.ack(1)
    ctx.r('ack_after_queue_deleted', a.ping())
    ctx.r('cancel_after_server_cancel', a.cancel('victim'))
    # queue deleted by the consuming channel itself: order of events
    q4 = ctx.q('selfdel')
    b = ctx.fresh()
    b.qdecl(q4)
    b.consume(q4, 'self')
    b.send(spec.Queue.Delete(queue=q4))
    ctx.r('self_delete_event_order', brief(b.events(0.5)))
    # consumer without consumer_cancel_notify capability
    q5 = ctx.q('nocap')
    c2 = ctx.conn(capabilities={})
    d = c2.channel()
    d.qdecl(q5)
    d.consume(q5, 'nc')
    ctx.r('delete_consumed_no_cap', ctx.fresh().qdelete(q5))
    ctx.r('events_no_cancel_notify_cap', brief(d.events(0.4)))
    # cancel consumer with unacked messages, then messages stay unacked until close
    q6 = ctx.q('cancel-unacked')
    c3 = ctx.conn()
    e = c3.channel()
    e.qdecl(q6)
    fill(e, q6, 3)
    e.consume(q6, 'cu')
    ctx.r('cu_deliveries', brief(e.events(0.3)))
    ctx.r('cu_cancel', e.cancel('cu'))
    ctx.r('cu_passive_after_cancel', ctx.fresh().qdecl(q6, passive=True))
    e.ack(2)
    ctx.r('cu_ack_after_cancel', e.ping())
    ctx.r('cu_close_channel', e.close())
    ctx.r('cu_after_close', [[g.get('body'), g.get('redelivered')]
                             for g in [ctx.fresh().get(q6, True) for _ in range(3)]])
    # nowait consume and cancel
    ch = ctx.fresh()
    ch.consume(q, 'nw', nowait=True)
    ctx.r('nowait_consume', [ch.ping(), ch.events()])
    ch.send(spec.Basic.Cancel(consumer_tag='nw', nowait=True))
    ctx.r('nowait_cancel', [ch.ping(), ch.events()])
    # consumer arguments
    ctx.r('consume_priority_str', ctx.fresh().consume(q, 'p1', args={'x-priority': 'high'}))
    ctx.r('consume_priority_int', ctx.fresh().consume(q, 'p2', args={'x-priority': 10}))
    ctx.r('consume_unknown_arg', ctx.fresh().consume(q, 'p3', args={'x-dp': 1}))
    # auto-delete queue goes away after last consumer cancels
    q7 = ctx.q('autodel')
    ch = ctx.fresh()
    ch.qdecl(q7, auto_delete=True)
    ch.consume(q7, 'ad1')
    ch.consume(q7, 'ad2')
    ch.cancel('ad1')
    ctx.r('autodel_after_first_cancel', ctx.fresh().qdecl(q7, passive=True))
    ch.cancel('ad2')
    time.sleep(0.1)
    ctx.r('autodel_after_last_cancel', ctx.fresh().qdecl(q7, passive=True))
    q8 = ctx.q('autodel-never')
    ch = ctx.fresh()
    ch.qdecl(q8, auto_delete=True)
    ctx.r('autodel_never_consumed', ctx.fresh().qdecl(q8, passive=True))
    # consumer on queue with messages: delivery shape
    q9 = ctx.q('shape')
    ch = ctx.fresh()
    ch.qdecl(q9)
    ch.pub('', q9, 'x', content_type='text/plain')
    ch.consume(q9, 'shape')
    ctx.r('deliver_shape', ch.events(0.3))
    # consume on exclusive queue of own connection from another channel
    q10 = ctx.q('ownexcl')
    c4 = ctx.conn()
    c4.channel().qdecl(q10, exclusive=True)
    ctx.r('consume_own_exclusive_other_channel', c4.channel().consume(q10, 'o'))
    # empty-tag consume twice on the same channel gives distinct tags
    ch = ctx.fresh()
    t1 = ch.consume(q).get('consumer_tag')
    t2 = ch.consume(q).get('consumer_tag')
    ctx.r('two_generated_tags_distinct', t1 != t2)


@scenario
def s06_delete_purge_counts(ctx):
    q = ctx.q('q')
    ch = ctx.fresh()
    ch.qdecl(q)
    fill(ch, q, 3)
    c = ctx.fresh()
    c.consume(q, 'holder')
    time.sleep(0.2)
    ctx.r('delete_if_unused_with_consumer', ctx.fresh().qdelete(q, if_unused=True))
    ctx.r('delete_if_empty_with_unacked_only', ctx.fresh().qdelete(q, if_empty=True))
    ctx.r('delete_if_unused_and_if_empty', ctx.fresh().qdelete(q, if_unused=True, if_empty=True))
    c.close()
    time.sleep(0.1)
    ctx.r('delete_if_empty_with_ready', ctx.fresh().qdelete(q, if_empty=True))
    ctx.r('delete_if_unused_no_consumer', ctx.fresh().qdelete(q, if_unused=True))
    # counts
    q2 = ctx.q('counts')
    ch = ctx.fresh()
    ctx.r('declare_counts_empty', ch.qdecl(q2))
    fill(ch, q2, 5)
    g = ctx.fresh()
    ctx.r('get_ok_message_counts', [g.get(q2).get('message_count'), g.get(q2).get('message_count')])
    ctx.r('passive_with_2_unacked', ctx.fresh().qdecl(q2, passive=True))
    ctx.r('redeclare_with_2_unacked', ctx.fresh().qdecl(q2))
    ctx.r('purge_with_2_unacked', ctx.fresh().purge(q2))
    ctx.r('passive_after_purge', ctx.fresh().qdecl(q2, passive=True))
    g.nack(0, multiple=True, requeue=True)
    ctx.r('nack_back_ping', g.ping())
    ctx.r('passive_after_requeue', ctx.fresh().qdecl(q2, passive=True))
    fill(ch, q2, 2, prefix='n')
    h = ctx.fresh()
    h.get(q2)
    ctx.r('delete_with_ready_and_unacked', ctx.fresh().qdelete(q2))
    h.ack(1)
    ctx.r('ack_after_queue_deleted', h.ping())
    q3 = ctx.q('purge-unacked-only')
    ch = ctx.fresh()
    ch.qdecl(q3)
    fill(ch, q3, 1)
    ch.get(q3)
    ctx.r('purge_unacked_only', ctx.fresh().purge(q3))
    ctx.r('purge_twice_same_channel', [ch.purge(q3), ch.purge(q3)])
    # exchange delete if_unused
    x, x2 = ctx.x('x'), ctx.x('x2')
    ch = ctx.fresh()
    ch.xdecl(x)
    ch.xdecl(x2)
    ch.bind(q3, x, 'k')
    ctx.r('xdelete_if_unused_with_queue_binding', ctx.fresh().xdelete(x, if_unused=True))
    ch = ctx.fresh()
    ch.unbind(q3, x, 'k')
    ch.xbind(x2, x, 'k')
    ctx.r('xdelete_if_unused_source_of_e2e', ctx.fresh().xdelete(x, if_unused=True))
    ctx.r('xdelete_if_unused_dest_of_e2e', ctx.fresh().xdelete(x2, if_unused=True))
    ctx.r('xdelete_if_unused_after_dest_deleted', ctx.fresh().xdelete(x, if_unused=True))
    ctx.r('xdelete_twice', [ctx.fresh().xdelete(x), ctx.fresh().xdelete(x)])
    # delete queue twice
    ctx.r('qdelete_twice', [ctx.fresh().qdelete(q3), ctx.fresh().qdelete(q3)])


@scenario
def s07_exclusive_queue(ctx):
    a = ctx.conn()
    q = ctx.q('excl')
    ch = a.channel()
    ctx.r('declare_exclusive_A', ch.qdecl(q, exclusive=True))
    ctx.r('A_bind', ch.bind(q, 'amq.direct', 'owner-key'))
    fill(ch, q, 2)
    b = ctx.conn()
    for label, fn in [
        ('B_passive', lambda c: c.qdecl(q, passive=True)),
        ('B_declare', lambda c: c.qdecl(q)),
        ('B_declare_exclusive', lambda c: c.qdecl(q, exclusive=True)),
        ('B_bind', lambda c: c.bind(q, 'amq.direct', 'k')),
        ('B_unbind_nonexistent_binding', lambda c: c.unbind(q, 'amq.direct', 'k')),
        ('B_unbind_existing_binding', lambda c: c.unbind(q, 'amq.direct', 'owner-key')),
        ('B_consume', lambda c: c.consume(q, 'b')),
        ('B_purge', lambda c: c.purge(q)),
        ('B_delete', lambda c: c.qdelete(q)),
        ('B_delete_if_unused', lambda c: c.qdelete(q, if_unused=True)),
        ('B_get', lambda c: c.get(q)),
    ]:
        if b.closed:
            b = ctx.conn()
        ctx.r(label, fn(b.channel()))
    if b.closed:
        b = ctx.conn()
    bc = b.channel()
    bc.confirm()
    bc.pub('', q, 'fromB', mandatory=True)
    ctx.r('B_publish_default_exchange', [brief(bc.events(0.3)), bc.ping()])
    ctx.r('A_messages', [g.get('body') for g in [a.channel().get(q, True) for _ in range(3)]])
    ctx.r('A_close', a.close())
    time.sleep(0.2)
    ctx.r('B_passive_after_owner_closed', ctx.conn().channel().qdecl(q, passive=True))
    # exclusive + auto_delete + durable
    c = ctx.conn()
    q2 = ctx.q('excl-durable')
    ctx.r('declare_exclusive_durable', c.channel().qdecl(q2, exclusive=True, durable=True))
    c.close()
    time.sleep(0.2)
    ctx.r('exclusive_durable_after_close', ctx.conn().channel().qdecl(q2, passive=True))


@scenario
def s08_qos_flow_recover(ctx):
    ch = ctx.fresh()
    ctx.r('qos_prefetch_size', ch.qos(count=0, size=1000))
    ctx.r('after_qos_prefetch_size', ch.ping())
    ch = ctx.fresh()
    ctx.r('qos_global', ch.qos(count=5, glob=True))
    ctx.r('qos_zero', ch.qos(count=0))
    ch = ctx.fresh()
    ctx.r('flow_active_false', ch.call(spec.Channel.Flow(active=False)))
    ctx.r('after_flow_false', ch.ping())
    ch = ctx.fresh()
    ctx.r('flow_active_true', ch.call(spec.Channel.Flow(active=True)))
    ctx.r('after_flow_true', ch.ping())
    # recover requeue=True with a consumer
    q = ctx.q('recover')
    ch = ctx.fresh()
    ch.qdecl(q)
    fill(ch, q, 3)
    ch.consume(q, 'rc')
    ctx.r('initial_deliveries', brief(ch.events(0.3)))
    ch.send(spec.Basic.Recover(requeue=True))
    ctx.r('recover_true_events', brief(ch.events(0.5)))
    ch.ack(0, multiple=True)
    ctx.r('ack_all_after_recover', ch.ping())
    ctx.r('count_after', ctx.fresh().qdecl(q, passive=True))
    # recover requeue=False with a consumer
    q2 = ctx.q('recover-false')
    ch = ctx.fresh()
    ch.qdecl(q2)
    fill(ch, q2, 2)
    ch.consume(q2, 'rf')
    ctx.r('rf_initial', brief(ch.events(0.3)))
    ch.send(spec.Basic.Recover(requeue=False))
    ctx.r('recover_false_events', brief(ch.events(0.5)))
    ctx.r('recover_false_ping', ch.ping())
    # recover with basic.get unacked, no consumer
    q3 = ctx.q('recover-get')
    ch = ctx.fresh()
    ch.qdecl(q3)
    fill(ch, q3, 3)
    ctx.r('got', [ch.get(q3).get('body'), ch.get(q3).get('body')])
    ctx.r('recover_get_requeue', ch.call(spec.Basic.Recover(requeue=True)))
    ctx.r('after_recover_gets', [[g.get('body'), g.get('redelivered'), g.get('delivery_tag')]
                                 for g in [ch.get(q3, True) for _ in range(3)]])
    ch = ctx.fresh()
    fill(ch, q3, 1, prefix='g')
    ch.get(q3)
    ctx.r('recover_false_with_get', ch.call(spec.Basic.Recover(requeue=False)))
    ctx.r('after_recover_false_get', [ch.ping(), ctx.fresh().qdecl(q3, passive=True)])
    ch = ctx.fresh()
    ch.send(spec.Basic.RecoverAsync(requeue=True))
    ctx.r('recover_async', [ch.ping(), ch.events()])
    # prefetch 1: one delivery until ack
    q4 = ctx.q('prefetch')
    ch = ctx.fresh()
    ch.qdecl(q4)
    fill(ch, q4, 3)
    ch.qos(1)
    ch.consume(q4, 'pf')
    ctx.r('prefetch1_first', brief(ch.events(0.3)))
    ch.ack(1)
    ctx.r('prefetch1_after_ack', brief(ch.events(0.3)))
    # global qos over two consumers
    q5, q6 = ctx.q('g1'), ctx.q('g2')
    ch = ctx.fresh()
    ch.qdecl(q5)
    ch.qdecl(q6)
    fill(ch, q5, 3)
    fill(ch, q6, 3)
    ch.qos(2, glob=True)
    ch.consume(q5, 'g1')
    ch.consume(q6, 'g2')
    ctx.r('global_qos_2_deliveries_count', len(brief(ch.events(0.4))))
    # per-consumer + global both
    q7 = ctx.q('both')
    ch = ctx.fresh()
    ch.qdecl(q7)
    fill(ch, q7, 5)
    ch.qos(3, glob=True)
    ch.qos(1, glob=False)
    ch.consume(q7, 'b1')
    ch.consume(q7, 'b2')
    ch.consume(q7, 'b3')
    ctx.r('global3_consumer1_three_consumers', len(brief(ch.events(0.4))))
    # qos change after consume (applies to existing consumer?)
    q8 = ctx.q('qos-change')
    ch = ctx.fresh()
    ch.qdecl(q8)
    fill(ch, q8, 4)
    ch.qos(1)
    ch.consume(q8, 'qc')
    n1 = len(brief(ch.events(0.3)))
    ch.qos(3)
    n2 = len(brief(ch.events(0.3)))
    ctx.r('qos_raised_after_consume', [n1, n2])


@scenario
def s09a_message_expiration(ctx):
    q = ctx.q('exp')
    ch = ctx.fresh()
    ch.qdecl(q)
    for label, exp in [('0', '0'), ('100', '100'), ('-1', '-1'), ('abc', 'abc'), ('1.5', '1.5'),
                       ('empty', ''), ('space', ' 100'), ('1e3', '1e3'), ('plus', '+100'),
                       ('huge', '99999999999999999999'), ('10y', '315360000000'),
                       ('10y_plus_1', '315360000001'), ('trailing_space', '100 '),
                       ('hex', '0x10'), ('leading_zero', '0100'), ('minus_zero', '-0')]:
        ch = ctx.fresh()
        ch.pub('', q, 'exp-' + label, expiration=exp)
        ctx.r('publish_expiration_' + label, ch.ping())
    time.sleep(0.3)
    ctx.r('survivors', ctx.fresh().drain_gets(q))
    # expiration "0" with a waiting consumer
    q2 = ctx.q('exp0-consumer')
    ch = ctx.fresh()
    ch.qdecl(q2)
    ch.consume(q2, 'z')
    ch.pub('', q2, 'zero', expiration='0')
    ctx.r('expiration_0_with_consumer', brief(ch.events(0.4)))
    # queue ttl 0
    q3 = ctx.q('ttl0')
    ch = ctx.fresh()
    ch.qdecl(q3, args={'x-message-ttl': 0})
    ch.pub('', q3, 'gone')
    time.sleep(0.1)
    ctx.r('queue_ttl0_get', ch.get(q3))
    # expiration property preserved on delivery
    q4 = ctx.q('exp-kept')
    ch = ctx.fresh()
    ch.qdecl(q4)
    ch.pub('', q4, 'kept', expiration='60000')
    ctx.r('expiration_property_on_delivery', ch.get(q4, True).get('props'))
    # queue ttl shorter vs message ttl: min wins
    q5 = ctx.q('minttl')
    ch = ctx.fresh()
    ch.qdecl(q5, args={'x-message-ttl': 100})
    ch.pub('', q5, 'a', expiration='60000')
    ch.pub('', q5, 'b')
    time.sleep(0.4)
    ctx.r('queue_ttl_wins', ch.drain_gets(q5))
    # x-expires queue
    q6 = ctx.q('expires')
    ch = ctx.fresh()
    ch.qdecl(q6, args={'x-expires': 200})
    ctx.r('x_expires_before', ch.qdecl(q6, passive=True))
    time.sleep(0.8)
    ctx.r('x_expires_after', ctx.fresh().qdecl(q6, passive=True))


def dlx_setup(ctx, ch, name, **qargs):
    dlx = ctx.x(name + '-dlx')
    dlq = ctx.q(name + '-dlq')
    src = ctx.q(name + '-src')
    ch.xdecl(dlx, type='fanout')
    ch.qdecl(dlq)
    ch.bind(dlq, dlx)
    args = {'x-dead-letter-exchange': dlx}
    args.update(qargs)
    ch.qdecl(src, args=args)
    return src, dlq, dlx


def dl_view(g):
    """Everything the consumer of a dead-lettered message sees."""
    if g.get('method') != 'Basic.GetOk':
        return g
    return {'exchange': g['exchange'], 'routing_key': g['routing_key'], 'props': g['props'],
            'body': g['body'], 'redelivered': g['redelivered'],
            'header_key_order': list((g['props'].get('headers') or {}).keys()),
            'x_death_key_order': [list(e[1].keys()) for e in
                                  (g['props'].get('headers') or {}).get('x-death', ['A', []])[1]]}


@scenario
def s09b_dead_letter(ctx):
    ch = ctx.fresh()
    # expired (queue ttl)
    src, dlq, dlx = dlx_setup(ctx, ch, 'ttl', **{'x-message-ttl': 100})
    ch.pub('', src, 'expired', headers={'h': 'v', 'n': 7}, message_id='m1',
           delivery_mode=2)
    time.sleep(0.5)
    ctx.r('expired_queue_ttl', dl_view(ch.get(dlq, True)))
    # expired (per-message expiration)
    src, dlq, dlx = dlx_setup(ctx, ch, 'msgexp')
    ch.pub('', src, 'expired-msg', expiration='100')
    time.sleep(0.5)
    ctx.r('expired_per_message', dl_view(ch.get(dlq, True)))
    # rejected
    src, dlq, dlx = dlx_setup(ctx, ch, 'rej')
    ch.pub('', src, 'rejected', headers={'h': 1})
    g = ch.get(src)
    ch.reject(g['delivery_tag'], requeue=False)
    ch.ping()
    time.sleep(0.1)
    ctx.r('rejected', dl_view(ch.get(dlq, True)))
    # nack
    ch.pub('', src, 'nacked')
    g = ch.get(src)
    ch.nack(g['delivery_tag'], requeue=False)
    ch.ping()
    time.sleep(0.1)
    ctx.r('nacked', dl_view(ch.get(dlq, True)))
    # maxlen drop-head
    src, dlq, dlx = dlx_setup(ctx, ch, 'maxlen', **{'x-max-length': 1})
    ch.pub('', src, 'first')
    ch.pub('', src, 'second')
    ch.ping()
    time.sleep(0.1)
    ctx.r('maxlen_dlq', dl_view(ch.get(dlq, True)))
    ctx.r('maxlen_src', ch.drain_gets(src))
    # dead-letter routing key
    src, dlq, dlx = dlx_setup(ctx, ch, 'dlrk', **{'x-dead-letter-routing-key': 'newrk'})
    ch.pub('', src, 'dlrk')
    g = ch.get(src)
    ch.reject(g['delivery_tag'], requeue=False)
    ch.ping()
    time.sleep(0.1)
    ctx.r('dead_letter_routing_key', dl_view(ch.get(dlq, True)))
    # CC / BCC headers with dead lettering
    src, dlq, dlx = dlx_setup(ctx, ch, 'cc')
    ch.pub('', src, 'cc', headers={'CC': ['other-rk'], 'BCC': ['bcc-rk']})
    ctx.r('cc_bcc_on_publish_delivery', None)
    g = ch.get(src)
    ctx.r('cc_bcc_headers_seen_by_consumer', g.get('props'))
    ch.reject(g['delivery_tag'], requeue=False)
    ch.ping()
    time.sleep(0.1)
    ctx.r('cc_dead_lettered', dl_view(ch.get(dlq, True)))
    # twice through two queues
    x1, x2 = ctx.x('two-x1'), ctx.x('two-x2')
    q1, q2, q3 = ctx.q('two-q1'), ctx.q('two-q2'), ctx.q('two-q3')
    ch.xdecl(x1, type='fanout')
    ch.xdecl(x2, type='fanout')
    ch.qdecl(q1, args={'x-message-ttl': 100, 'x-dead-letter-exchange': x1})
    ch.qdecl(q2, args={'x-message-ttl': 100, 'x-dead-letter-exchange': x2})
    ch.qdecl(q3)
    ch.bind(q2, x1)
    ch.bind(q3, x2)
    ch.pub('', q1, 'twice', headers={'orig': True})
    time.sleep(0.8)
    ctx.r('dead_lettered_twice_two_queues', dl_view(ch.get(q3, True)))
    # same queue twice: reject, republish the dead-lettered message, reject again
    src, dlq, dlx = dlx_setup(ctx, ch, 'again')
    ch.pub('', src, 'again', headers={'k': 'v'})
    g = ch.get(src)
    ch.reject(g['delivery_tag'], requeue=False)
    ch.ping()
    time.sleep(0.1)
    d = ch.get(dlq, True)
    props = d['props']
    ch.pub('', src, 'again2', headers=to_typed(props['headers']))
    g = ch.get(src)
    ch.reject(g['delivery_tag'], requeue=False)
    ch.ping()
    time.sleep(0.1)
    ctx.r('rejected_twice_same_queue', dl_view(ch.get(dlq, True)))
    # then expire from the same queue: a new reason entry
    src2 = ctx.q('again-ttl')
    ch.qdecl(src2, args={'x-dead-letter-exchange': dlx, 'x-message-ttl': 50})
    d = ch.get(dlq, True) if False else None
    ch.pub('', src, 'again3', headers={'k': 'v'})
    g = ch.get(src)
    ch.reject(g['delivery_tag'], requeue=False)
    ch.ping()
    time.sleep(0.1)
    d = ch.get(dlq, True)
    ch.pub('', src2, 'again3b', headers=to_typed(d['props']['headers']))
    time.sleep(0.4)
    ctx.r('rejected_then_expired', dl_view(ch.get(dlq, True)))
    # dead-lettering with exotic header types (broker must re-encode headers)
    src, dlq, dlx = dlx_setup(ctx, ch, 'types')
    ch.pub('', src, 'types', headers=EXOTIC_HEADERS)
    g = ch.get(src)
    ch.reject(g['delivery_tag'], requeue=False)
    ch.ping()
    time.sleep(0.1)
    ctx.r('dead_lettered_exotic_headers', dl_view(ch.get(dlq, True)))
    # dead-letter to a missing exchange: dropped
    q9 = ctx.q('dlx-missing')
    ch.qdecl(q9, args={'x-dead-letter-exchange': 'dp-no-such-dlx-%s' % RUN})
    ch.pub('', q9, 'lost')
    g = ch.get(q9)
    ch.reject(g['delivery_tag'], requeue=False)
    ctx.r('dlx_missing_exchange', [ch.ping(), ch.qdecl(q9, passive=True)])
    # dead letter cycle: queue dead-letters to itself via default exchange on expiry
    q10 = ctx.q('cycle')
    ch.qdecl(q10, args={'x-dead-letter-exchange': '', 'x-message-ttl': 50})
    ch.pub('', q10, 'cycle')
    time.sleep(0.5)
    ctx.r('self_cycle_expired', [ch.qdecl(q10, passive=True).get('message_count')])
    # rejected self cycle is allowed (not a cycle when rejected)
    q11 = ctx.q('cycle-rej')
    ch.qdecl(q11, args={'x-dead-letter-exchange': ''})
    ch.pub('', q11, 'cyc-rej')
    g = ch.get(q11)
    ch.reject(g['delivery_tag'], requeue=False)
    ch.ping()
    time.sleep(0.1)
    # default exchange dead-lettering uses original routing key (= queue name)
    ctx.r('self_cycle_rejected', dl_view(ch.get(q11, True)))


EXOTIC_HEADERS = {
    'str': 'text', 'utf8': 'h\u00e9llo', 'bytes': b'\x00\x01\xff', 'true': True, 'false': False,
    'int32': 42, 'int64': 2 ** 40, 'neg': -7, 'byte': T('b', -5), 'ubyte': T('B', 200),
    'short': T('s', -300), 'ushort': T('u', 60000), 'uint': T('i', 4000000000),
    'float': T('f', 1.5), 'double': 2.25, 'decimal': T('D', (2, 12345)),
    'timestamp': T('T', 1700000000), 'void': None,
    'array': [1, 'a', True, None, [2, 'b'], {'k': 'v'}],
    'table': {'nested': {'deep': [1, 2]}, 'x': 1.0}, 'empty_table': {}, 'empty_array': [],
}


@scenario
def s10_priorities(ctx):
    q = ctx.q('prio')
    ch = ctx.fresh()
    ch.qdecl(q, args={'x-max-priority': 5})
    prios = [None, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, None, 5]
    for i, p in enumerate(prios):
        ch.pub('', q, 'p%s-%d' % (p, i), priority=p)
    ch.ping()
    ctx.r('passive_count', ch.qdecl(q, passive=True))
    ctx.r('get_order', ch.drain_gets(q))
    for i, p in enumerate(prios):
        ch.pub('', q, 'p%s-%d' % (p, i), priority=p)
    ch.ping()
    ch.consume(q, 'pc', no_ack=True)
    ctx.r('consume_order', bodies(ch.events(0.5)))
    ch.cancel('pc')
    # priority property preserved as published (not capped)
    ch.pub('', q, 'p9', priority=9)
    ctx.r('priority_property_kept', ch.get(q, True).get('props'))
    # requeued messages within priorities
    for p in (1, 5, 3):
        ch.pub('', q, 'r%d' % p, priority=p)
    ch.ping()
    gs = [ch.get(q) for _ in range(3)]
    ch.nack(0, multiple=True, requeue=True)
    ctx.r('order_after_requeue', [[g.get('body'), g.get('redelivered')]
                                  for g in [ch.get(q, True) for _ in range(3)]])
    # no x-max-priority: FIFO regardless of priority
    q2 = ctx.q('noprio')
    ch.qdecl(q2)
    for p in (1, 9, 0, 5):
        ch.pub('', q2, 'n%d' % p, priority=p)
    ch.ping()
    ctx.r('no_max_priority_order', ch.drain_gets(q2))


@scenario
def s11_server_named(ctx):
    ch = ctx.fresh()
    ctx.r('passive_empty_name_no_previous', ch.qdecl('', passive=True))
    ch = ctx.fresh()
    r = ch.qdecl('')
    ctx.r('declare_empty_name', r)
    gen = r.get('queue', '')
    ctx.r('generated_name_len', len(gen))
    ctx.r('generated_name_charset_ok', bool(re.fullmatch(r'amq\.gen-[A-Za-z0-9_\-]{22}', gen)))
    ctx.r('declare_empty_name_durable', ctx.fresh().qdecl('', durable=True))
    ctx.r('declare_empty_name_passive_after_declare', ch.qdecl('', passive=True))
    ctx.r('consume_generated_tag', ctx.fresh().consume(gen))
    # "" shortcuts on a channel with a previously declared queue (one channel each)
    q = ctx.q('last')

    def prepared():
        c = ctx.fresh()
        c.qdecl(q)
        return c
    ctx.r('shortcut_passive', prepared().qdecl('', passive=True))
    c = prepared()
    ctx.r('shortcut_bind_empty_key', c.bind('', 'amq.direct', ''))
    c.pub('amq.direct', q, 'via-shortcut-binding')
    c.pub('amq.direct', '', 'empty-key')
    c.ping()
    ctx.r('shortcut_bind_routing', c.drain_gets(q))
    ctx.r('shortcut_unbind_empty_key', prepared().unbind('', 'amq.direct', ''))
    c = prepared()
    c.pub('', q, 'direct')
    c.ping()
    ctx.r('shortcut_get', c.get('', True))
    ctx.r('shortcut_purge', prepared().purge(''))
    c = prepared()
    ctx.r('shortcut_consume', c.consume('', 'sc'))
    ctx.r('shortcut_cancel', c.cancel('sc'))
    ctx.r('shortcut_bind_named_queue_empty_key', prepared().bind(q, 'amq.fanout', ''))
    ctx.r('shortcut_delete', prepared().qdelete(''))
    ctx.r('after_shortcut_delete_passive_by_name', ctx.fresh().qdecl(q, passive=True))
    for label, fn in [('bind', lambda c: c.bind('', 'amq.direct', 'k')),
                      ('get', lambda c: c.get('')), ('purge', lambda c: c.purge('')),
                      ('consume', lambda c: c.consume('')),
                      ('delete', lambda c: c.qdelete(''))]:
        ctx.r('shortcut_%s_no_previous' % label, fn(ctx.fresh()))
    # shortcut after passive declare / after declare on another channel
    ch = ctx.fresh()
    ch.qdecl('amq.gen-doesnotexist-dp', passive=True)
    ch = ctx.fresh()
    q2 = ctx.q('passive-last')
    ctx.fresh().qdecl(q2)
    ch.qdecl(q2, passive=True)
    ctx.r('shortcut_after_passive_declare', ch.get(''))
    # consumer tag prefix when not given
    ch = ctx.fresh()
    tags = [ch.consume(gen).get('consumer_tag') for _ in range(1)]
    ctx.r('ctag_charset_ok', [bool(re.fullmatch(r'amq\.ctag-[A-Za-z0-9_\-]{22}', t or ''))
                              for t in tags])
    # client declares a name that looks server generated
    ctx.r('declare_amq_gen_name', ctx.fresh().qdecl('amq.gen-dp%s' % RUN))


@scenario
def s12_mandatory_confirm(ctx):
    x = ctx.x('nobind')
    q = ctx.q('q')
    ch = ctx.fresh()
    ch.xdecl(x)
    ch.qdecl(q)
    ctx.r('confirm_select', ch.confirm())
    ctx.r('confirm_select_twice', ch.confirm())
    ch.pub(x, 'k', 'unroutable-mandatory', mandatory=True, message_id='um')
    ctx.r('mandatory_unroutable_events', ch.events(0.4))
    ch.pub('', 'dp-no-such-queue-%s' % RUN, 'mandatory-default', mandatory=True)
    ctx.r('mandatory_default_missing_queue', brief(ch.events(0.4)))
    ch.pub(x, 'k', 'unroutable-nonmandatory')
    ctx.r('non_mandatory_unroutable', brief(ch.events(0.4)))
    ch.pub('', q, 'routed', mandatory=True)
    ctx.r('mandatory_routed', brief(ch.events(0.4)))
    for i in range(5):
        ch.pub('', q, 'burst%d' % i)
    ctx.r('burst_confirms', expand_confirms(ch.events(0.5)))
    ch = ctx.fresh()
    ch.pub(x, 'k', 'ret-no-confirm', mandatory=True)
    ctx.r('mandatory_no_confirm', brief(ch.events(0.4)))
    ch = ctx.fresh()
    ch.pub('', q, 'immediate', immediate=True)
    ctx.r('immediate_true', ch.ping())
    ch = ctx.fresh()
    ch.confirm()
    ch.pub('dpx-missing-%s' % RUN, 'k', 'x')
    ctx.r('confirm_publish_missing_exchange', [brief(ch.events(0.4)), ch.ping()])
    # reject-publish overflow -> nack
    q2 = ctx.q('rp')
    ch = ctx.fresh()
    ch.qdecl(q2, args={'x-max-length': 1, 'x-overflow': 'reject-publish'})
    ch.confirm()
    for i in range(3):
        ch.pub('', q2, 'rp%d' % i, mandatory=True)
    ctx.r('reject_publish_confirms', expand_confirms(ch.events(0.5)))
    ctx.r('reject_publish_content', ch.drain_gets(q2))
    ch = ctx.fresh()
    for i in range(2):
        ch.pub('', q2, 'nc%d' % i)
    ctx.r('reject_publish_no_confirm', [ch.ping(), ch.drain_gets(q2)])
    # reject-publish-dlx
    q3 = ctx.q('rpd')
    dl = ctx.q('rpd-dl')
    ch = ctx.fresh()
    ch.qdecl(dl)
    ch.qdecl(q3, args={'x-max-length': 1, 'x-overflow': 'reject-publish-dlx',
                       'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': dl})
    ch.confirm()
    ch.pub('', q3, 'a')
    ch.pub('', q3, 'b')
    ctx.r('reject_publish_dlx_confirms', expand_confirms(ch.events(0.5)))
    ctx.r('reject_publish_dlx_dlq', ch.drain_gets(dl))
    # two queues, one rejects: nack
    q4, q5 = ctx.q('two-a'), ctx.q('two-b')
    fx = ctx.x('fan')
    ch = ctx.fresh()
    ch.xdecl(fx, type='fanout')
    ch.qdecl(q4)
    ch.qdecl(q5, args={'x-max-length': 0, 'x-overflow': 'reject-publish'})
    ch.bind(q4, fx)
    ch.bind(q5, fx)
    ch.confirm()
    ch.pub(fx, '', 'one')
    ctx.r('fanout_one_queue_rejects', expand_confirms(ch.events(0.5)))
    # confirm tags continue after returns
    ch = ctx.fresh()
    ch.confirm()
    ch.pub(x, 'k', 'r1', mandatory=True)
    ch.pub('', q, 'ok')
    ch.pub(x, 'k', 'r2', mandatory=True)
    evs = ch.events(0.5)
    ctx.r('mixed_sequence_confirms', expand_confirms(evs))
    ctx.r('mixed_sequence_returns', [e['body'] for e in evs if e.get('method') == 'Basic.Return'])
    ctx.r('mixed_sequence_return_precedes_its_ack', return_precedes_ack(evs, {'r1': 1, 'r2': 3}))
    ctx.r('mixed_sequence_raw_INFORMATIONAL', brief(evs))
    # returned message keeps properties
    ch = ctx.fresh()
    ch.pub(x, 'rk', 'retprops', mandatory=True, headers={'a': 1}, priority=3,
           content_type='text/plain')
    ctx.r('returned_message_props', ch.events(0.4))


@scenario
def s13_headers_exchange(ctx):
    hx = ctx.x('hx')
    ch = ctx.fresh()
    ch.xdecl(hx, type='headers')
    binds = {
        'all': {'x-match': 'all', 'a': 1, 'b': 'x'},
        'any': {'x-match': 'any', 'a': 1, 'b': 'x'},
        'default': {'a': 1, 'b': 'x'},
        'allx': {'x-match': 'all-with-x', 'x-foo': 'bar'},
        'anyx': {'x-match': 'any-with-x', 'x-foo': 'bar', 'a': 2},
        'all_xkey': {'x-match': 'all', 'x-foo': 'bar'},
        'any_xkey': {'x-match': 'any', 'x-foo': 'bar'},
        'bool': {'c': True},
        'void': {'a': None},
        'empty_all': {'x-match': 'all'},
        'empty_any': {'x-match': 'any'},
        'nothing': {},
        'long1': {'a': T('l', 1)},
        'str1': {'a': '1'},
    }
    qs = {}
    for k, args in binds.items():
        qs[k] = ctx.q('h-' + k)
        ch.qdecl(qs[k])
        ctx.r('bind_' + k, ch.bind(qs[k], hx, '', args))
    msgs = [('ab', {'a': 1, 'b': 'x'}), ('a', {'a': 1}), ('b', {'b': 'x'}),
            ('a_str', {'a': '1'}), ('a_long', {'a': T('l', 1)}), ('a_byte', {'a': T('b', 1)}),
            ('a_double', {'a': 1.0}), ('a2', {'a': 2}), ('xfoo', {'x-foo': 'bar'}),
            ('xfoo_a', {'x-foo': 'bar', 'a': 1, 'b': 'x'}), ('c_true', {'c': True}),
            ('c_1', {'c': 1}), ('a_void', {'a': None}), ('none', None), ('empty', {})]
    for body, h in msgs:
        ch.pub(hx, 'ignored', body, headers=h)
    ch.ping()
    time.sleep(0.1)
    ctx.r('routing', {k: ch.drain_gets(q) for k, q in qs.items()})
    ctx.r('bind_bad_x_match', ctx.fresh().bind(qs['all'], hx, '', {'x-match': 'bogus', 'a': 1}))
    ctx.r('bind_x_match_int', ctx.fresh().bind(qs['all'], hx, '', {'x-match': 1}))
    # unbind requires identical args
    ch = ctx.fresh()
    ctx.r('unbind_other_args', ch.unbind(qs['all'], hx, '', {'x-match': 'all', 'a': 1}))
    ch.pub(hx, '', 'still-bound', headers={'a': 1, 'b': 'x'})
    ch.ping()
    ctx.r('after_unbind_other_args', ch.drain_gets(qs['all']))
    ctx.r('unbind_same_args', ch.unbind(qs['all'], hx, '', binds['all']))
    ch.pub(hx, '', 'unbound', headers={'a': 1, 'b': 'x'})
    ch.ping()
    ctx.r('after_unbind_same_args', ch.drain_gets(qs['all']))


@scenario
def s14_topic_exchange(ctx):
    tx = ctx.x('tx')
    ch = ctx.fresh()
    ch.xdecl(tx, type='topic')
    patterns = ['#', 'a.#.b', '*.*', '', 'a..b', 'a.*', '#.b', 'a.#', '*', 'a.#.#.b', '#.#',
                '*.#', 'a.*.b', 'A.b', '..']
    qs = {}
    for i, p in enumerate(patterns):
        qs[p] = ctx.q('t%d' % i)
        ch.qdecl(qs[p])
        ch.bind(qs[p], tx, p)
    keys = ['', 'a', 'a.b', 'a..b', 'a.x.b', 'a.x.y.b', 'x.y', '.', 'a.', 'b', 'A.b', '..',
            '.b', 'a.b.c']
    for k in keys:
        ch.pub(tx, k, 'k[%s]' % k)
    ch.ping()
    time.sleep(0.1)
    ctx.r('routing', {p: ch.drain_gets(q) for p, q in qs.items()})
    # duplicate binding: single delivery
    q = qs['#']
    ch.bind(q, tx, 'a.*')
    ch.pub(tx, 'a.b', 'dup')
    ch.ping()
    ctx.r('two_matching_bindings_one_copy', ch.drain_gets(q))
    # direct exchange with empty key and duplicate binds
    dx = ctx.x('dx')
    ch.xdecl(dx)
    dq = ctx.q('dq')
    ch.qdecl(dq)
    ctx.r('bind_twice', [ch.bind(dq, dx, ''), ch.bind(dq, dx, '')])
    ch.pub(dx, '', 'empty-key')
    ch.pub(dx, 'x', 'other-key')
    ch.ping()
    ctx.r('direct_empty_key', ch.drain_gets(dq))
    # fanout ignores key
    fx = ctx.x('fx')
    ch.xdecl(fx, type='fanout')
    fq = ctx.q('fq')
    ch.qdecl(fq)
    ch.bind(fq, fx, 'whatever')
    ch.pub(fx, 'other', 'fan')
    ch.ping()
    ctx.r('fanout', ch.drain_gets(fq))


@scenario
def s15_alternate_and_e2e(ctx):
    ae, x, q, aq = ctx.x('ae'), ctx.x('main'), ctx.q('k'), ctx.q('ae')
    ch = ctx.fresh()
    ch.xdecl(ae, type='fanout')
    ch.xdecl(x, args={'alternate-exchange': ae})
    ch.qdecl(q)
    ch.qdecl(aq)
    ch.bind(q, x, 'k')
    ch.bind(aq, ae)
    ch.confirm()
    ch.pub(x, 'k', 'routed')
    ch.pub(x, 'z', 'to-ae', mandatory=True)
    evs = ch.events(0.4)
    ctx.r('ae_confirms', expand_confirms(evs))
    ctx.r('ae_returns', [e for e in evs if e.get('method') == 'Basic.Return'])
    ctx.r('ae_events_INFORMATIONAL', brief(evs))
    ctx.r('ae_queues', [ch.drain_gets(q), ch.drain_gets(aq)])
    g = ch.get(aq)
    # AE pointing to missing exchange
    x2 = ctx.x('ae-missing')
    ch.xdecl(x2, args={'alternate-exchange': 'dpx-nonexistent-%s' % RUN})
    ch.pub(x2, 'z', 'ae-missing', mandatory=True)
    ctx.r('ae_missing_events', brief(ch.events(0.4)))
    # AE with no bindings + mandatory
    ae3, x3 = ctx.x('ae-empty'), ctx.x('main3')
    ch.xdecl(ae3, type='fanout')
    ch.xdecl(x3, args={'alternate-exchange': ae3})
    ch.pub(x3, 'z', 'ae-empty', mandatory=True)
    ctx.r('ae_unbound_mandatory', brief(ch.events(0.4)))
    # AE as a non-string
    ctx.r('ae_int_arg', ctx.fresh().xdecl(ctx.x('ae-int'), args={'alternate-exchange': 5}))
    # AE chain loop: a -> b -> a
    la, lb = ctx.x('loop-a'), ctx.x('loop-b')
    ch = ctx.fresh()
    ch.xdecl(la, args={'alternate-exchange': lb})
    ch.xdecl(lb, args={'alternate-exchange': la})
    ch.confirm()
    ch.pub(la, 'z', 'loop', mandatory=True)
    ctx.r('ae_loop', brief(ch.events(0.4)))
    # e2e bindings
    src, dst, eq = ctx.x('src'), ctx.x('dst'), ctx.q('eq')
    ch = ctx.fresh()
    ch.xdecl(src, type='topic')
    ch.xdecl(dst, type='fanout')
    ch.qdecl(eq)
    ch.bind(eq, dst)
    ctx.r('xbind', ch.xbind(dst, src, 'a.*'))
    ch.pub(src, 'a.b', 'e2e-match')
    ch.pub(src, 'b.b', 'e2e-nomatch')
    ch.ping()
    ctx.r('e2e_routing', ch.drain_gets(eq))
    ctx.r('xbind_twice', ch.xbind(dst, src, 'a.*'))
    ctx.r('xunbind', ch.xunbind(dst, src, 'a.*'))
    ch.pub(src, 'a.b', 'after-unbind')
    ch.ping()
    ctx.r('after_xunbind', ch.drain_gets(eq))
    # loop of e2e bindings: one copy
    ea, eb, lq = ctx.x('e-a'), ctx.x('e-b'), ctx.q('lq')
    ch.xdecl(ea, type='fanout')
    ch.xdecl(eb, type='fanout')
    ch.qdecl(lq)
    ch.xbind(eb, ea)
    ch.xbind(ea, eb)
    ch.bind(lq, ea)
    ch.bind(lq, eb)
    ch.pub(ea, '', 'e2e-loop')
    ch.ping()
    ctx.r('e2e_loop_copies', ch.drain_gets(lq))
    # exchange bound to itself
    ctx.r('xbind_self', ch.xbind(ea, ea))
    ch.pub(ea, '', 'self')
    ch.ping()
    ctx.r('self_bound_copies', ch.drain_gets(lq))
    # internal exchange
    ix = ctx.x('internal')
    ch = ctx.fresh()
    ch.xdecl(ix, type='fanout', internal=True)
    ch.pub(ix, '', 'to-internal')
    ctx.r('publish_to_internal', ch.ping())
    ch = ctx.fresh()
    ix2q = ctx.q('ix')
    ch.qdecl(ix2q)
    ch.bind(ix2q, ix)
    ch.xbind(ix, src, '#')
    ch.pub(src, 'x.y', 'via-internal')
    ch.ping()
    ctx.r('e2e_into_internal', ch.drain_gets(ix2q))
    # auto-delete exchange deleted when last binding removed
    adx = ctx.x('autodel')
    ch = ctx.fresh()
    ch.xdecl(adx, type='fanout', auto_delete=True)
    ctx.r('autodel_x_unbound', ctx.fresh().xdecl(adx, passive=True))
    ch.bind(eq, adx)
    ch.unbind(eq, adx)
    ctx.r('autodel_x_after_unbind', ctx.fresh().xdecl(adx, passive=True))


@scenario
def s16_properties(ctx):
    q = ctx.q('props')
    ch = ctx.fresh()
    ch.qdecl(q)
    full = spec.BasicProperties(
        content_type='application/json', content_encoding='gzip', headers=EXOTIC_HEADERS,
        delivery_mode=2, priority=7, correlation_id='corr-1', reply_to='reply.q',
        expiration='60000', message_id='mid-1', timestamp=1700000000, type='my.type',
        user_id='guest', app_id='app', cluster_id='cluster-x')
    ch.send(spec.Basic.Publish(exchange='', routing_key=q), b'full', full)
    ctx.r('full_props_get', ch.get(q, True))
    ch.send(spec.Basic.Publish(exchange='', routing_key=q), b'full', full)
    ch.consume(q, 'pc', no_ack=True)
    ctx.r('full_props_deliver', ch.events(0.3))
    ch.cancel('pc')
    ch.pub('', q, 'none')
    ctx.r('no_props', ch.get(q, True))
    ch.pub('', q, 'empty-headers', headers={})
    ctx.r('empty_headers_table', ch.get(q, True).get('props'))
    ch.pub('', q, 'weird', delivery_mode=3, priority=200)
    ctx.r('delivery_mode_3_priority_200', [ch.ping(), ch.get(q, True).get('props')])
    ch = ctx.fresh()
    ch.pub('', q, 'bad-user', user_id='bob')
    ctx.r('user_id_mismatch', ch.ping())
    ch = ctx.fresh()
    ch.pub('', q, 'empty-user', user_id='')
    ctx.r('user_id_empty', ch.ping())
    # body sizes / frame splitting
    ch = ctx.fresh()
    for n in (0, 1, 131064, 131065, 300000):
        ch.pub('', q, b'z' * n)
        g = ch.get(q, True)
        ctx.r('body_%d' % n, {k: g.get(k) for k in ('body_size', 'body_frames')}
              | {'len_ok': isinstance(g.get('body'), str) and len(g.get('body')) == n})
    ctx.r('events_after_bodies', ch.events(0.2))
    # delivered routing key / exchange fields on amq.direct
    ch.bind(q, 'amq.direct', 'rk1')
    ch.pub('amq.direct', 'rk1', 'via-amq.direct')
    g = ch.get(q, True)
    ctx.r('get_ok_fields', {k: v for k, v in g.items() if k not in ('props',)})
    ctx.r('get_empty_fields', ch.get(q, True))


@scenario
def s17_transactions(ctx):
    q = ctx.q('tx')
    ch = ctx.fresh()
    ch.qdecl(q)
    ctx.r('commit_without_select', ctx.fresh().call(spec.Tx.Commit()))
    ctx.r('rollback_without_select', ctx.fresh().call(spec.Tx.Rollback()))
    ch = ctx.fresh()
    ctx.r('tx_select', ch.call(spec.Tx.Select()))
    ctx.r('tx_select_twice', ch.call(spec.Tx.Select()))
    ctx.r('confirm_after_tx', ch.confirm())
    ch = ctx.fresh()
    ch.confirm()
    ctx.r('tx_after_confirm', ch.call(spec.Tx.Select()))
    # publish inside tx: invisible until commit
    ch = ctx.fresh()
    ch.call(spec.Tx.Select())
    ch.pub('', q, 't1')
    ch.pub('', q, 't2')
    ctx.r('get_before_commit', ctx.fresh().get(q))
    ctx.r('passive_before_commit', ctx.fresh().qdecl(q, passive=True))
    ctx.r('commit', ch.call(spec.Tx.Commit()))
    ctx.r('passive_after_commit', ctx.fresh().qdecl(q, passive=True))
    ch.pub('', q, 't3')
    ctx.r('rollback', ch.call(spec.Tx.Rollback()))
    ctx.r('passive_after_rollback', ctx.fresh().qdecl(q, passive=True))
    # acks in tx then rollback
    g = ch.get(q)
    ctx.r('get_in_tx', [g.get('body'), g.get('delivery_tag')])
    ch.ack(g['delivery_tag'])
    ctx.r('rollback_ack', ch.call(spec.Tx.Rollback()))
    ctx.r('passive_after_ack_rollback', ctx.fresh().qdecl(q, passive=True))
    ch.ack(g['delivery_tag'])
    ctx.r('ack_again_after_rollback', ch.ping())
    ctx.r('commit_ack', ch.call(spec.Tx.Commit()))
    ctx.r('passive_after_ack_commit', ctx.fresh().qdecl(q, passive=True))
    # reject requeue inside tx, rollback
    ch = ctx.fresh()
    ch.call(spec.Tx.Select())
    g = ch.get(q)
    ch.reject(g['delivery_tag'], requeue=True)
    ctx.r('reject_then_rollback', ch.call(spec.Tx.Rollback()))
    ctx.r('passive_after_reject_rollback', ctx.fresh().qdecl(q, passive=True))
    ch.close()
    ctx.r('remaining', ctx.fresh().drain_gets(q))
    # ack of unknown tag inside tx: error at ack time or at commit?
    ch = ctx.fresh()
    ch.call(spec.Tx.Select())
    ch.ack(77)
    ctx.r('unknown_ack_in_tx', ch.ping())
    ctx.r('unknown_ack_in_tx_commit', ch.call(spec.Tx.Commit()))
    # mandatory unroutable inside tx: return before commit-ok?
    ch = ctx.fresh()
    ch.call(spec.Tx.Select())
    ch.pub('amq.direct', 'dp-nowhere-%s' % RUN, 'txret', mandatory=True)
    ctx.r('tx_mandatory_before_commit', brief(ch.events(0.3)))
    ch.send(spec.Tx.Commit())
    ctx.r('tx_mandatory_commit_events', brief(ch.events(0.4)))
    # publish to missing exchange in tx
    ch = ctx.fresh()
    ch.call(spec.Tx.Select())
    ch.pub('dpx-missing-%s' % RUN, 'k', 'x')
    ctx.r('tx_publish_missing_exchange', [ch.ping()])
    # tx across closing channel: uncommitted publishes discarded
    q2 = ctx.q('tx2')
    ch = ctx.fresh()
    ch.qdecl(q2)
    ch.call(spec.Tx.Select())
    ch.pub('', q2, 'lost')
    ch.close()
    ctx.r('uncommitted_after_close', ctx.fresh().qdecl(q2, passive=True))


@scenario
def s18_protocol_errors(ctx):
    import struct as st
    cases = {}

    def raw_case(label, data, wait=1.0):
        c = ctx.conn()
        ch = c.channel()
        c.send_raw(data(c) if callable(data) else data)
        c.pump(wait)
        evs = [dict({k: v for k, v in ev.items() if k != '_obj'}, on_channel_num=chn)
               for chn, ev in c.inbox]
        c.inbox = []
        if not c.closed:
            evs.append({'then_ping': ch.ping() if not ch.closed else c.channel().open_result})
        ctx.r(label, evs)

    fr = Connection.frame
    raw_case('body_frame_without_publish', fr(3, 1, b'hello'))
    raw_case('header_frame_without_publish',
             fr(2, 1, st.pack('>HHQH', 60, 0, 5, 0)))
    pub = lambda c: pika.frame.Method(1, spec.Basic.Publish(exchange='', routing_key='x')).marshal()  # noqa
    raw_case('publish_then_method', lambda c: pub(c) + pika.frame.Method(
        1, spec.Basic.Qos(prefetch_count=1)).marshal())
    raw_case('publish_then_body_no_header', lambda c: pub(c) + fr(3, 1, b'x'))
    raw_case('header_wrong_class', lambda c: pub(c) + fr(2, 1, st.pack('>HHQH', 50, 0, 1, 0)))
    raw_case('body_longer_than_declared', lambda c: pub(c) + fr(2, 1, st.pack(
        '>HHQH', 60, 0, 2, 0)) + fr(3, 1, b'abcd'))
    raw_case('bad_frame_end', lambda c: st.pack('>BHI', 1, 1, 4) + st.pack('>HH', 60, 40)
             + b'\x00' * 0 + b'\xab')
    raw_case('unknown_frame_type', fr(9, 1, b'xx'))
    raw_case('unknown_method', fr(1, 1, st.pack('>HH', 60, 999)))
    raw_case('unknown_class', fr(1, 1, st.pack('>HH', 999, 10)))
    raw_case('method_on_unopened_channel', lambda c: pika.frame.Method(
        7, spec.Queue.Declare(queue='', exclusive=True)).marshal())
    raw_case('channel_open_twice', lambda c: pika.frame.Method(1, spec.Channel.Open()).marshal())
    raw_case('channel_above_max', lambda c: pika.frame.Method(
        4000, spec.Channel.Open()).marshal())
    raw_case('heartbeat_on_channel_1', fr(8, 1, b''))
    raw_case('frame_too_large', lambda c: pub(c) + fr(2, 1, st.pack('>HHQH', 60, 0, 200000, 0))
             + fr(3, 1, b'z' * 140000))
    raw_case('connection_method_on_channel_1',
             lambda c: pika.frame.Method(1, spec.Connection.Open(virtual_host='/')).marshal())
    raw_case('channel_method_on_channel_0',
             lambda c: pika.frame.Method(0, spec.Basic.Qos(prefetch_count=1)).marshal())
    raw_case('truncated_method_args', fr(1, 1, st.pack('>HH', 50, 10) + b'\x00'))
    def closed_channel(c):
        c.channels[1].close()
        return pika.frame.Method(1, spec.Queue.Declare(queue='', exclusive=True)).marshal()
    raw_case('method_on_closed_channel', closed_channel)
    raw_case('close_ok_unsolicited', lambda c: pika.frame.Method(
        1, spec.Channel.CloseOk()).marshal())
    raw_case('publish_shortstr_overflow', fr(1, 1, st.pack('>HHH', 60, 40, 0) + b'\xff' + b'a'))
    # client sends a bad protocol header
    import socket
    for label, hdr_bytes in [('bad_protocol_header_091_2', b'AMQP\x00\x00\x09\x02'),
                             ('bad_protocol_header_amqp10', b'AMQP\x03\x01\x00\x00'),
                             ('garbage_header', b'GET / HTTP/1.1\r\n\r\n')]:
        s = socket.create_connection(('127.0.0.1', ctx.port), timeout=3)
        s.sendall(hdr_bytes)
        data = b''
        try:
            while True:
                d = s.recv(4096)
                if not d:
                    break
                data += d
        except socket.timeout:
            data += b'<timeout>'
        except OSError as e:
            data += ('<%s>' % e.__class__.__name__).encode()
        s.close()
        ctx.r(label, repr(data[:64]))


import pika.frame  # noqa: E402


@scenario
def s19_single_active_consumer(ctx):
    q = ctx.q('sac')
    c = ctx.conn()
    a, b = c.channel(), c.channel()
    a.qdecl(q, args={'x-single-active-consumer': True})
    fill(a, q, 4)
    a.qos(1)
    b.qos(1)
    a.consume(q, 'A')
    time.sleep(0.1)
    b.consume(q, 'B')
    ctx.r('a_events', brief(a.events(0.3)))
    ctx.r('b_events', brief(b.events(0.1)))
    ctx.r('passive_consumer_count', ctx.fresh().qdecl(q, passive=True))
    a.cancel('A')
    ctx.r('a_after_cancel', brief(a.events(0.2)))
    ctx.r('b_after_a_cancel', brief(b.events(0.3)))
    ctx.r('exclusive_consume_on_sac', ctx.fresh().consume(q, 'X', exclusive=True))


@scenario
def s20_requeue_order(ctx):
    q = ctx.q('order')
    ch = ctx.fresh()
    ch.qdecl(q)
    fill(ch, q, 5)
    gs = [ch.get(q) for _ in range(3)]
    ch.nack(2, requeue=True)
    ch.reject(1, requeue=True)
    ch.ping()
    ctx.r('after_requeue_2_then_1', [[g.get('body'), g.get('redelivered')]
                                     for g in [ch.get(q, True) for _ in range(4)]])
    ch.ack(3)
    ctx.r('ack3', ch.ping())
    # channel close requeues in order
    fill(ch, q, 3, prefix='c')
    ch2 = ctx.fresh()
    [ch2.get(q) for _ in range(3)]
    ch2.close()
    ctx.r('after_channel_close', [[g.get('body'), g.get('redelivered')]
                                  for g in [ch.get(q, True) for _ in range(4)]])
    # consumer sees requeued message again (redelivered)
    fill(ch, q, 2, prefix='d')
    ch.qos(10)
    ch.consume(q, 'rq')
    first = ch.events(0.3)
    ch.nack(first[0]['delivery_tag'] if first else 1, requeue=True)
    ctx.r('consumer_requeue', brief(first) + ['--'] + brief(ch.events(0.3)))
    # connection close requeues
    q2 = ctx.q('connclose')
    c = ctx.conn()
    x = c.channel()
    x.qdecl(q2)
    fill(x, q2, 2)
    x.consume(q2, 'cc')
    x.events(0.3)
    c.close()
    time.sleep(0.1)
    ctx.r('after_connection_close', [[g.get('body'), g.get('redelivered')]
                                     for g in [ctx.fresh().get(q2, True) for _ in range(3)]])


@scenario
def s21_max_length(ctx):
    q = ctx.q('ml')
    ch = ctx.fresh()
    ch.qdecl(q, args={'x-max-length': 2})
    fill(ch, q, 5)
    ch.ping()
    ctx.r('drop_head', [ch.qdecl(q, passive=True), ch.drain_gets(q)])
    q2 = ctx.q('mlb')
    ch.qdecl(q2, args={'x-max-length-bytes': 10})
    for b in ('aaaa', 'bbbb', 'cccc', 'dddddddddddd'):
        ch.pub('', q2, b)
    ch.ping()
    ctx.r('max_length_bytes', ch.drain_gets(q2))
    q3 = ctx.q('ml0')
    ch.qdecl(q3, args={'x-max-length': 0})
    ch.pub('', q3, 'zero')
    ch.ping()
    ctx.r('max_length_0', ch.drain_gets(q3))
    # unacked messages count towards max-length?
    q4 = ctx.q('ml-unacked')
    ch = ctx.fresh()
    ch.qdecl(q4, args={'x-max-length': 2})
    fill(ch, q4, 2)
    ch.get(q4)
    fill(ch, q4, 2, prefix='n')
    ch.ping()
    ctx.r('max_length_with_unacked', [ch.qdecl(q4, passive=True), ch.drain_gets(q4)])


@scenario
def s22_direct_reply_to(ctx):
    ch = ctx.fresh()
    ctx.r('consume_reply_to_ack_mode', ch.consume('amq.rabbitmq.reply-to', 'r0'))
    ch = ctx.fresh()
    ch.pub('', 'amq.rabbitmq.reply-to', 'x', reply_to='amq.rabbitmq.reply-to')
    ctx.r('publish_reply_to_without_consumer', ch.ping())
    client = ctx.fresh()
    ctx.r('consume_reply_to', client.consume('amq.rabbitmq.reply-to', 'rt', no_ack=True))
    srv_q = ctx.q('rpc')
    server = ctx.fresh()
    server.qdecl(srv_q)
    client.pub('', srv_q, 'request', reply_to='amq.rabbitmq.reply-to')
    client.ping()
    req = server.get(srv_q, True)
    rt = (req.get('props') or {}).get('reply_to', '')
    ctx.r('reply_to_rewritten_prefix', rt.startswith('amq.rabbitmq.reply-to.'))
    server.pub('', rt, 'response')
    ctx.r('server_reply_ping', server.ping())
    ctx.r('client_gets_reply', brief(client.events(0.3)))
    ctx.r('passive_reply_to_pseudo_queue', ctx.fresh().qdecl('amq.rabbitmq.reply-to', passive=True))
    ctx.r('passive_reply_to_full_name', ctx.fresh().qdecl(rt, passive=True))
    ch = ctx.fresh()
    ch.pub('', 'amq.rabbitmq.reply-to.bogus', 'x')
    ctx.r('publish_bogus_reply_to', ch.ping())


@scenario
def s23_consumer_priority_and_sac(ctx):
    q = ctx.q('cprio')
    c = ctx.conn()
    lo, hi = c.channel(), c.channel()
    lo.qdecl(q)
    lo.qos(100)
    hi.qos(100)
    lo.consume(q, 'lo', args={'x-priority': 0})
    hi.consume(q, 'hi', args={'x-priority': 10})
    fill(lo, q, 4)
    ctx.r('high_priority_consumer_gets_all', [bodies(hi.events(0.4)), bodies(lo.events(0.1))])
    # high priority consumer blocked by prefetch: overflow goes to low priority
    q2 = ctx.q('cprio2')
    c2 = ctx.conn()
    lo, hi = c2.channel(), c2.channel()
    lo.qdecl(q2)
    hi.qos(1)
    lo.qos(100)
    hi.consume(q2, 'hi', args={'x-priority': 5})
    lo.consume(q2, 'lo', args={'x-priority': -5})
    fill(lo, q2, 3)
    ctx.r('blocked_high_priority_spills', [bodies(hi.events(0.4)), bodies(lo.events(0.1))])
    # SAC where the active consumer acks everything before cancelling
    q3 = ctx.q('sac-clean')
    c3 = ctx.conn()
    a, b = c3.channel(), c3.channel()
    a.qdecl(q3, args={'x-single-active-consumer': True})
    fill(a, q3, 3)
    a.qos(1)
    b.qos(1)
    a.consume(q3, 'A')
    time.sleep(0.1)
    b.consume(q3, 'B')
    first = a.events(0.3)
    a.ack(first[0]['delivery_tag'] if first else 1)
    a.ping()
    second = a.events(0.3)
    a.ack(second[0]['delivery_tag'] if second else 2)
    a.cancel('A')
    ctx.r('sac_clean_handover', [bodies(first + second), bodies(b.events(0.5))])
    # SAC: active consumer's channel closes with an unacked message
    q4 = ctx.q('sac-close')
    c4 = ctx.conn()
    a, b = c4.channel(), c4.channel()
    a.qdecl(q4, args={'x-single-active-consumer': True})
    fill(a, q4, 2)
    a.qos(1)
    b.qos(1)
    a.consume(q4, 'A')
    time.sleep(0.1)
    b.consume(q4, 'B')
    got_a = brief(a.events(0.3))
    a.close()
    seen = []
    for _ in range(4):
        evs = b.events(0.4)
        for e in evs:
            if e.get('method') == 'Basic.Deliver':
                seen.append([e['body'], e['redelivered']])
                b.ack(e['delivery_tag'])
        if not evs:
            break
    ctx.r('sac_active_channel_closed', [got_a, seen])


@scenario
def s24_handshake_variants(ctx):
    def attempt(label, **kw):
        try:
            c = Connection(ctx.port, **kw)
            ch = c.channel()
            extra = {}
            if kw.get('tune_ok', {}).get('frame_max'):
                q = ctx.q('fm-' + label)
                ch.qdecl(q)
                ch.pub('', q, b'y' * 10000)
                g = ch.get(q, True)
                extra = {k: g.get(k) for k in ('body_size', 'body_frames')}
            ctx.r(label, ['connected', ch.open_result, extra])
            c.close()
        except Exception as e:
            ctx.r(label, str(e)[:400])
    import pika.data as pd
    pieces = []
    pd.encode_table(pieces, {'LOGIN': 'guest', 'PASSWORD': 'guest'})
    amqplain = b''.join(pieces)[4:]
    attempt('amqplain', mechanism='AMQPLAIN', response=amqplain)
    attempt('unknown_mechanism', mechanism='FOO')
    attempt('plain_garbage_response', response='garbage')
    attempt('frame_max_4096', tune_ok={'frame_max': 4096})
    attempt('frame_max_1024_below_min', tune_ok={'frame_max': 1024})
    attempt('frame_max_above_server', tune_ok={'frame_max': 200000})
    attempt('frame_max_0', tune_ok={'frame_max': 0})
    attempt('channel_max_above_server', tune_ok={'channel_max': 5000})
    attempt('channel_max_0', tune_ok={'channel_max': 0})
    attempt('channel_max_2', tune_ok={'channel_max': 2})
    # channel number above the negotiated channel_max
    c = ctx.conn(tune_ok={'channel_max': 2})
    r = c.channel(3).open_result
    ctx.r('open_channel_above_negotiated_max', r)
    attempt('heartbeat_5', tune_ok={'heartbeat': 5})


@scenario
def s25_names_and_nowait(ctx):
    ch = ctx.fresh()
    base = 'dp.%s.s25.' % RUN
    ctx.r('queue_name_with_crlf', ch.qdecl(base + 'crlf\r\n'))
    ctx.queues.append(base + 'crlf')
    ctx.r('queue_name_crlf_stripped_passive', ctx.fresh().qdecl(base + 'crlf', passive=True))
    long_name = base + 'L' * (255 - len(base))
    ctx.queues.append(long_name)
    ctx.r('queue_name_255', ctx.fresh().qdecl(long_name).get('method'))
    ctx.r('queue_name_unicode', ctx.fresh().qdecl(base + 'h\u00e9llo'))
    ctx.queues.append(base + 'h\u00e9llo')
    ctx.r('exchange_name_with_crlf', ctx.fresh().xdecl('dpx.%s.s25.crlf\r\n' % RUN))
    ctx.exchanges.append('dpx.%s.s25.crlf' % RUN)
    ctx.r('exchange_name_crlf_stripped_passive',
          ctx.fresh().xdecl('dpx.%s.s25.crlf' % RUN, passive=True))
    # nowait variants
    ch = ctx.fresh()
    q = ctx.q('nw')
    x = ctx.x('nw')
    ch.send(spec.Queue.Declare(queue=q, nowait=True))
    ch.send(spec.Exchange.Declare(exchange=x, type='fanout', nowait=True))
    ch.send(spec.Queue.Bind(queue=q, exchange=x, routing_key='', nowait=True))
    ch.send(spec.Confirm.Select(nowait=True))
    ch.pub(x, '', 'nowait-path')
    ctx.r('nowait_events', brief(ch.events(0.4)))
    ctx.r('nowait_result', ch.drain_gets(q))
    ch.send(spec.Queue.Declare(queue=q, durable=True, nowait=True))
    ctx.r('nowait_declare_error', [ch.ping()])
    ch = ctx.fresh()
    ch.send(spec.Queue.Delete(queue=q, nowait=True))
    ch.send(spec.Exchange.Delete(exchange=x, nowait=True))
    ctx.r('nowait_deletes', [ch.ping(), brief(ch.events()),
                             ctx.fresh().qdecl(q, passive=True)])
    # purge nowait
    q2 = ctx.q('nwp')
    ch = ctx.fresh()
    ch.qdecl(q2)
    fill(ch, q2, 2)
    ch.send(spec.Queue.Purge(queue=q2, nowait=True))
    ctx.r('nowait_purge', [ch.ping(), brief(ch.events()), ch.qdecl(q2, passive=True)])


# ================================================================ runner
def run_one(fn, port):
    ctx = Ctx(port, fn.__name__.split('_')[0])

    def on_alarm(*_):
        raise ScenarioTimeout('scenario exceeded 120 s')
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(120)
    t0 = time.time()
    try:
        fn(ctx)
    except Exception as e:
        ctx.r('EXCEPTION', ''.join(traceback.format_exception_only(type(e), e)).strip()
              + ' @ ' + traceback.extract_tb(e.__traceback__)[-1].__repr__()[:200])
    finally:
        signal.alarm(0)
        ctx.cleanup()
    return norm(ctx.rec), round(time.time() - t0, 2)


def main():
    sel = sys.argv[1:]
    out_path = os.environ.get('RESULTS', '/tmp/differential-results.json')
    results = {}
    if sel and os.path.exists(out_path):  # partial run: update the stored results in place
        with open(out_path) as f:
            results = json.load(f)
    ndiff_total = 0
    matched = []
    for fn in SCENARIOS:
        if sel and not any(s in fn.__name__ for s in sel):
            continue
        res = {}
        for name, port in BROKERS:
            res[name], dt = run_one(fn, port)
            res[name + '_seconds'] = dt
        results[fn.__name__] = res
        a = dict((k, v) for k, v in res['rabbit'])
        b = dict((k, v) for k, v in res['warren'])
        labels = [k for k, _ in res['rabbit']] + [k for k, _ in res['warren']
                                                  if k not in a]
        diffs = []
        for k in labels:
            va, vb = a.get(k, '<missing>'), b.get(k, '<missing>')
            ja, jb = json.dumps(va, default=str), json.dumps(vb, default=str)
            if ja != jb and not k.endswith('_INFORMATIONAL'):
                order_only = (json.dumps(va, sort_keys=True, default=str)
                              == json.dumps(vb, sort_keys=True, default=str))
                diffs.append((k, ja, jb, order_only))
        print('=' * 100)
        print('%s: %d steps, %d differ  (rabbit %.1fs, warren %.1fs)' % (
            fn.__name__, len(labels), len(diffs), res['rabbit_seconds'], res['warren_seconds']))
        if not diffs:
            matched.append(fn.__name__)
        for k, ja, jb, oo in diffs:
            ndiff_total += 1
            print('  - %s%s' % (k, '  [KEY ORDER ONLY]' if oo else ''))
            print('      rabbit: %s' % ja[:1500])
            print('      warren: %s' % jb[:1500])
        sys.stdout.flush()
        with open(out_path, 'w') as f:
            json.dump(results, f, indent=1, default=str)
    print('=' * 100)
    print('TOTAL differing steps: %d; fully matching scenarios: %s' % (ndiff_total,
                                                                       ', '.join(matched)))


if __name__ == '__main__':
    main()
