"""Minimal synchronous AMQP 0-9-1 client for differential probing.

Uses pika.spec only as a method codec. Everything the server sends is
recorded in arrival order, per channel, with exact field-table type tags.
"""
import os
import socket
import sys
import struct
import time

import pika.data
import pika.frame
import pika.spec as spec

FRAME_END = 0xCE
DEFAULT_TIMEOUT = 5.0


# --------------------------------------------------------------------------
# Typed values for outgoing tables (pika cannot encode every AMQP type)
# --------------------------------------------------------------------------
class T:
    """Explicitly typed field value: T('b', 5), T('f', 1.5), ..."""

    def __init__(self, tag, value):
        self.tag, self.value = tag, value


_orig_encode_value = pika.data.encode_value


def _encode_value(pieces, value):
    if isinstance(value, T):
        tag, v = value.tag, value.value
        fmt = {'b': '>b', 'B': '>B', 'U': '>h', 's': '>h', 'u': '>H', 'I': '>i',
               'i': '>I', 'l': '>q', 'L': '>q', 'f': '>f', 'd': '>d', 'T': '>Q', 't': '>B'}
        if tag in fmt:
            pieces.append(tag.encode() + struct.pack(fmt[tag], v))
            return 1 + struct.calcsize(fmt[tag])
        if tag in ('S', 'x'):
            b = v if isinstance(v, bytes) else v.encode()
            pieces.append(struct.pack('>cI', tag.encode(), len(b)) + b)
            return 5 + len(b)
        if tag == 'D':
            scale, raw = v
            pieces.append(struct.pack('>cBi', b'D', scale, raw))
            return 6
        raise ValueError(tag)
    if isinstance(value, float):
        pieces.append(struct.pack('>cd', b'd', value))
        return 9
    return _orig_encode_value(pieces, value)


pika.data.encode_value = _encode_value


# --------------------------------------------------------------------------
# Tagged decoding of field tables (keeps the wire type of every value)
# --------------------------------------------------------------------------
def _sstr(buf, off):
    n = buf[off]
    s = buf[off + 1:off + 1 + n]
    try:
        s = s.decode('utf-8')
    except UnicodeDecodeError:
        s = 'bytes:' + s.hex()
    return s, off + 1 + n


def dec_table(buf, off):
    (size,) = struct.unpack_from('>I', buf, off)
    off += 4
    end = off + size
    out = {}
    while off < end:
        k, off = _sstr(buf, off)
        v, off = dec_value(buf, off)
        out[k] = v
    return out, end


def dec_value(buf, off):
    tag = chr(buf[off])
    off += 1
    simple = {'t': '>B', 'b': '>b', 'B': '>B', 'U': '>h', 's': '>h', 'u': '>H', 'I': '>i',
              'i': '>I', 'L': '>q', 'l': '>q', 'f': '>f', 'd': '>d', 'T': '>Q'}
    if tag in simple:
        (v,) = struct.unpack_from(simple[tag], buf, off)
        off += struct.calcsize(simple[tag])
        if tag == 't':
            v = bool(v)
        return [tag, v], off
    if tag == 'D':
        scale, raw = struct.unpack_from('>Bi', buf, off)
        return [tag, [scale, raw]], off + 5
    if tag in ('S', 'x'):
        (n,) = struct.unpack_from('>I', buf, off)
        b = buf[off + 4:off + 4 + n]
        try:
            v = b.decode('utf-8') if tag == 'S' else 'hex:' + b.hex()
        except UnicodeDecodeError:
            v = 'hex:' + b.hex()
        return [tag, v], off + 4 + n
    if tag == 'A':
        (n,) = struct.unpack_from('>I', buf, off)
        off += 4
        end = off + n
        items = []
        while off < end:
            v, off = dec_value(buf, off)
            items.append(v)
        return [tag, items], end
    if tag == 'F':
        v, off = dec_table(buf, off)
        return [tag, v], off
    if tag == 'V':
        return [tag, None], off
    raise ValueError('unknown field type %r' % tag)


PROP_NAMES = ['content_type', 'content_encoding', 'headers', 'delivery_mode', 'priority',
              'correlation_id', 'reply_to', 'expiration', 'message_id', 'timestamp', 'type',
              'user_id', 'app_id', 'cluster_id']


def dec_props(buf, off):
    (flags,) = struct.unpack_from('>H', buf, off)
    off += 2
    props = {}
    for i, name in enumerate(PROP_NAMES):
        bit = 1 << (15 - i)
        if not flags & bit:
            continue
        if name == 'headers':
            props[name], off = dec_table(buf, off)
        elif name in ('delivery_mode', 'priority'):
            props[name] = buf[off]
            off += 1
        elif name == 'timestamp':
            (props[name],) = struct.unpack_from('>Q', buf, off)
            off += 8
        else:
            props[name], off = _sstr(buf, off)
    props['_flags'] = '0x%04x' % flags
    return props


def method_fields(m):
    d = {}
    for k, v in vars(m).items():
        if k.startswith('_'):
            continue
        if isinstance(v, bytes):
            try:
                v = v.decode()
            except UnicodeDecodeError:
                v = 'hex:' + v.hex()
        d[k] = v
    return d


class ProbeTimeout(Exception):
    pass


class Channel:
    def __init__(self, conn, num):
        self.conn, self.num = conn, num
        self.closed = None  # close record if closed by server

    # ---- raw ops ----
    def send(self, method, body=None, props=None):
        return self.conn.send_method(self.num, method, body, props)

    def call(self, method, body=None, props=None, timeout=DEFAULT_TIMEOUT):
        return self.conn.call(self.num, method, body, props, timeout)

    def events(self, settle=0.0):
        if settle:
            self.conn.pump(settle)
        return self.conn.take_events(self.num)

    def ping(self):
        """Round trip on this channel: shows an async channel/connection error."""
        r = self.call(spec.Exchange.Declare(exchange='amq.direct', type='direct',
                                            passive=True))
        if isinstance(r, dict) and r.get('method') == 'Exchange.DeclareOk':
            return 'ok'
        return r

    # ---- convenience ----
    def qdecl(self, queue='', passive=False, durable=False, exclusive=False, auto_delete=False,
              args=None, nowait=False):
        m = spec.Queue.Declare(queue=queue, passive=passive, durable=durable, exclusive=exclusive,
                               auto_delete=auto_delete, nowait=nowait, arguments=args)
        if nowait:
            return self.send(m)
        return self.call(m)

    def xdecl(self, exchange, type='direct', passive=False, durable=False, auto_delete=False,
              internal=False, args=None):
        return self.call(spec.Exchange.Declare(exchange=exchange, type=type,
                                               passive=passive, durable=durable,
                                               auto_delete=auto_delete, internal=internal,
                                               arguments=args))

    def bind(self, queue, exchange, rk='', args=None):
        return self.call(spec.Queue.Bind(queue=queue, exchange=exchange, routing_key=rk,
                                         arguments=args))

    def unbind(self, queue, exchange, rk='', args=None):
        return self.call(spec.Queue.Unbind(queue=queue, exchange=exchange, routing_key=rk,
                                           arguments=args))

    def xbind(self, dest, source, rk='', args=None):
        return self.call(spec.Exchange.Bind(destination=dest, source=source, routing_key=rk,
                                            arguments=args))

    def xunbind(self, dest, source, rk='', args=None):
        return self.call(spec.Exchange.Unbind(destination=dest, source=source, routing_key=rk,
                                              arguments=args))

    def qdelete(self, queue, if_unused=False, if_empty=False):
        return self.call(spec.Queue.Delete(queue=queue, if_unused=if_unused, if_empty=if_empty))

    def xdelete(self, exchange, if_unused=False):
        return self.call(spec.Exchange.Delete(exchange=exchange, if_unused=if_unused))

    def purge(self, queue):
        return self.call(spec.Queue.Purge(queue=queue))

    def pub(self, exchange, rk, body=b'', props=None, mandatory=False, immediate=False, **kw):
        if props is None and kw:
            props = spec.BasicProperties(**kw)
        if isinstance(body, str):
            body = body.encode()
        return self.send(spec.Basic.Publish(exchange=exchange, routing_key=rk,
                                            mandatory=mandatory, immediate=immediate),
                         body, props or spec.BasicProperties())

    def get(self, queue, no_ack=False):
        return self.call(spec.Basic.Get(queue=queue, no_ack=no_ack))

    def consume(self, queue, tag='', no_ack=False, exclusive=False, args=None, nowait=False):
        m = spec.Basic.Consume(queue=queue, consumer_tag=tag, no_ack=no_ack, exclusive=exclusive,
                               nowait=nowait, arguments=args)
        if nowait:
            return self.send(m)
        return self.call(m)

    def cancel(self, tag):
        return self.call(spec.Basic.Cancel(consumer_tag=tag))

    def ack(self, tag, multiple=False):
        return self.send(spec.Basic.Ack(delivery_tag=tag, multiple=multiple))

    def nack(self, tag, multiple=False, requeue=True):
        return self.send(spec.Basic.Nack(delivery_tag=tag, multiple=multiple, requeue=requeue))

    def reject(self, tag, requeue=True):
        return self.send(spec.Basic.Reject(delivery_tag=tag, requeue=requeue))

    def qos(self, count=0, size=0, glob=False):
        return self.call(spec.Basic.Qos(prefetch_size=size, prefetch_count=count,
                                        global_qos=glob))

    def confirm(self):
        return self.call(spec.Confirm.Select())

    def close(self):
        if self.closed or self.conn.closed:
            return
        return self.call(spec.Channel.Close(reply_code=200, reply_text='bye', class_id=0,
                                            method_id=0))

    def drain_gets(self, queue, no_ack=True, limit=50):
        """basic.get until empty; return list of (body, redelivered, message_count)."""
        out = []
        for _ in range(limit):
            r = self.get(queue, no_ack=no_ack)
            if not isinstance(r, dict) or r.get('method') != 'Basic.GetOk':
                if not (isinstance(r, dict) and r.get('method') == 'Basic.GetEmpty'):
                    out.append(r)
                break
            out.append(r['body'])
        return out


class Connection:
    def __init__(self, port, host='127.0.0.1', user='guest', password='guest', vhost='/',
                 frame_max=None, capabilities=None, timeout=DEFAULT_TIMEOUT, mechanism='PLAIN',
                 response=None, tune_ok=None):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b''
        self.inbox = []  # list of (channel, event dict) in arrival order
        self.partial = {}
        self.closed = None
        self.channels = {}
        self.next_ch = 1
        self.sock.sendall(b'AMQP\x00\x00\x09\x01')
        start = self._expect_raw(spec.Connection.Start)
        self.server_properties = start.server_properties
        self.start = start
        caps = capabilities if capabilities is not None else {
            'publisher_confirms': True, 'exchange_exchange_bindings': True,
            'basic.nack': True, 'consumer_cancel_notify': True, 'connection.blocked': True,
            'authentication_failure_close': True, 'per_consumer_qos': True}
        self.send_method(0, spec.Connection.StartOk(
            client_properties={'product': 'diffprobe', 'capabilities': caps},
            mechanism=mechanism,
            response=response if response is not None else '\0%s\0%s' % (user, password),
            locale='en_US'))
        tune = self._expect_raw(spec.Connection.Tune)
        self.tune = method_fields(tune)
        tok = dict(channel_max=tune.channel_max, frame_max=frame_max or tune.frame_max or 131072,
                   heartbeat=0)
        tok.update(tune_ok or {})
        self.frame_max = tok['frame_max'] or 131072
        self.send_method(0, spec.Connection.TuneOk(**tok))
        self.send_method(0, spec.Connection.Open(virtual_host=vhost))
        self._expect_raw(spec.Connection.OpenOk)

    # ---------------- low level ----------------
    def _expect_raw(self, cls, timeout=None):
        timeout = timeout or self.timeout
        deadline = time.time() + timeout
        while True:
            for i, (ch, ev) in enumerate(self.inbox):
                if ch == 0:
                    del self.inbox[i]
                    if isinstance(ev.get('_obj'), cls):
                        return ev['_obj']
                    raise RuntimeError('handshake: got %r' % clean(ev))
            if self.closed:
                raise RuntimeError('handshake: closed %r' % self.closed)
            if not self._read_frame(deadline):
                if self.closed:
                    raise RuntimeError('handshake: waiting for %s: %r' % (cls.NAME,
                                                                          clean(self.closed)))
                raise ProbeTimeout('handshake timeout waiting for %s' % cls.NAME)

    def send_raw(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            if not self.closed:
                self.closed = {'CLOSE': 'socket-error', 'error': str(e)}

    @staticmethod
    def frame(ftype, ch, payload):
        return struct.pack('>BHI', ftype, ch, len(payload)) + payload + bytes([FRAME_END])

    def send_method(self, ch, method, body=None, props=None):
        if self.closed:
            return {'error': 'connection already closed'}
        data = pika.frame.Method(ch, method).marshal()
        if body is not None:
            props = props or spec.BasicProperties()
            data += pika.frame.Header(ch, len(body), props).marshal()
            maxb = self.frame_max - 8
            for i in range(0, len(body), maxb):
                data += pika.frame.Body(ch, body[i:i + maxb]).marshal()
        self.send_raw(data)
        return None

    def _recv(self, deadline):
        remaining = deadline - time.time()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            return False
        except OSError as e:
            d = b''
            if not self.closed:
                self.closed = {'CLOSE': 'socket-error', 'error': str(e)}
                self.inbox.append((0, dict(self.closed)))
        if not d:
            if not self.closed:
                self.closed = {'CLOSE': 'socket-eof'}
                self.inbox.append((0, dict(self.closed)))
            return False
        self.buf += d
        return True

    def _read_frame(self, deadline):
        """Read and dispatch one frame. Returns False on timeout/EOF."""
        while True:
            if len(self.buf) >= 7:
                ftype, ch, size = struct.unpack_from('>BHI', self.buf, 0)
                if len(self.buf) >= 8 + size:
                    payload = self.buf[7:7 + size]
                    end = self.buf[7 + size]
                    self.buf = self.buf[8 + size:]
                    self._dispatch(ftype, ch, payload, end)
                    return True
            elif self.buf.startswith(b'AMQP') and len(self.buf) >= 8:
                self.inbox.append((0, {'raw_protocol_header': self.buf[:8].hex()}))
                self.buf = self.buf[8:]
                return True
            if self.closed and self.closed.get('CLOSE') in ('socket-eof', 'socket-error'):
                return False
            if not self._recv(deadline):
                return False

    def _dispatch(self, ftype, ch, payload, end):
        if end != FRAME_END:
            self.inbox.append((ch, {'bad_frame_end': end}))
        if ftype == 1:
            cid, mid = struct.unpack_from('>HH', payload, 0)
            cls = spec.methods.get((cid << 16) | mid)
            if cls is None:
                self.inbox.append((ch, {'unknown_method': [cid, mid]}))
                return
            m = cls()
            m.decode(payload, 4)
            if isinstance(m, (spec.Basic.Deliver, spec.Basic.GetOk, spec.Basic.Return)):
                self.partial[ch] = {'m': m, 'props': None, 'size': None, 'body': b'',
                                    'body_frames': []}
                return
            ev = {'method': m.NAME, **method_fields(m), '_obj': m}
            if isinstance(m, spec.Channel.Close):
                ev = {'CLOSE': 'channel', 'reply_code': m.reply_code, 'reply_text': m.reply_text,
                      'class_id': m.class_id, 'method_id': m.method_id, '_obj': m}
                self.send_method(ch, spec.Channel.CloseOk())
                c = self.channels.get(ch)
                if c:
                    c.closed = ev
            elif isinstance(m, spec.Connection.Close):
                ev = {'CLOSE': 'connection', 'reply_code': m.reply_code,
                      'reply_text': m.reply_text, 'class_id': m.class_id,
                      'method_id': m.method_id, 'on_channel': ch, '_obj': m}
                self.send_method(0, spec.Connection.CloseOk())
                self.closed = ev
            elif isinstance(m, spec.Connection.CloseOk):
                self.closed = self.closed or {'CLOSE': 'client'}
            self.inbox.append((ch, ev))
        elif ftype == 2:
            p = self.partial.get(ch)
            if p is None or p['props'] is not None:
                self.inbox.append((ch, {'unexpected_header_frame': True}))
                return
            _cid, _w, size = struct.unpack_from('>HHQ', payload, 0)
            p['props'] = dec_props(payload, 12)
            p['size'] = size
            if size == 0:
                self._finish(ch)
        elif ftype == 3:
            p = self.partial.get(ch)
            if p is None or p['props'] is None:
                self.inbox.append((ch, {'unexpected_body_frame': len(payload)}))
                return
            p['body'] += payload
            p['body_frames'].append(len(payload))
            if len(p['body']) >= p['size']:
                self._finish(ch)
        elif ftype == 8:
            self.inbox.append((ch, {'heartbeat': True}))
        else:
            self.inbox.append((ch, {'unknown_frame_type': ftype}))

    def _finish(self, ch):
        p = self.partial.pop(ch)
        m = p['m']
        body = p['body']
        try:
            body = body.decode()
        except UnicodeDecodeError:
            body = 'hex:' + body.hex()
        ev = {'method': m.NAME, **method_fields(m), 'props': p['props'], 'body': body,
              'body_size': p['size'], '_obj': m}
        if len(p['body_frames']) > 1 or p['size'] > 1000:
            ev['body_frames'] = p['body_frames']
        self.inbox.append((ch, ev))

    # ---------------- high level ----------------
    def channel(self, num=None):
        num = num or self.next_ch
        self.next_ch = max(self.next_ch, num + 1)
        c = Channel(self, num)
        self.channels[num] = c
        r = self.call(num, spec.Channel.Open())
        c.open_result = r
        return c

    def pump(self, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline and not (self.closed and self.closed.get('CLOSE') in (
                'socket-eof', 'socket-error')):
            if not self._read_frame(deadline):
                if self.closed:
                    break

    def take_events(self, ch):
        out, keep = [], []
        for c, ev in self.inbox:
            if c == ch or (c == 0 and 'CLOSE' in ev):
                out.append(clean(ev))
            else:
                keep.append((c, ev))
        self.inbox = keep
        return out

    def call(self, ch, method, body=None, props=None, timeout=DEFAULT_TIMEOUT):
        if self.closed:
            return {'error': 'connection already closed', 'closed': clean(self.closed)}
        c = self.channels.get(ch)
        if c is not None and c.closed:
            for i, (c2, ev) in enumerate(self.inbox):
                if c2 == ch and ev.get('CLOSE'):
                    del self.inbox[i]
                    return clean(ev)
            return {'error': 'channel already closed'}
        self.send_method(ch, method, body, props)
        if method.NAME == 'Basic.Get':
            want = ('Basic.GetOk', 'Basic.GetEmpty')
        else:
            want = (method.NAME + 'Ok',)
        deadline = time.time() + timeout
        while True:
            for i, (c2, ev) in enumerate(self.inbox):
                if c2 == ch and (ev.get('method') in want or ev.get('CLOSE')):
                    del self.inbox[i]
                    return clean(ev)
                if 'CLOSE' in ev and ev['CLOSE'] == 'connection':
                    del self.inbox[i]
                    return clean(ev)
                if ev.get('CLOSE') in ('socket-eof', 'socket-error'):
                    return clean(ev)
            if self.closed and self.closed.get('CLOSE') in ('socket-eof', 'socket-error'):
                return clean(self.closed)
            if not self._read_frame(deadline):
                if time.time() >= deadline:
                    return {'TIMEOUT': method.NAME}

    def close(self):
        if self.closed:
            try:
                self.sock.close()
            except OSError:
                pass
            return
        try:
            self.send_method(0, spec.Connection.Close(reply_code=200, reply_text='bye',
                                                      class_id=0, method_id=0))
            deadline = time.time() + 2
            while not self.closed and self._read_frame(deadline):
                pass
        finally:
            self.sock.close()


def clean(ev):
    return {k: v for k, v in ev.items() if k != '_obj'}
