"""A stand-in for the few Docker Engine API calls aio-pika's and aiormq's test
fixtures make, so their suites run unchanged against Warren.

Each "container" is a Warren process on free loopback ports (AMQP, AMQPS with
aiormq's test certificates, management) with its own data directory.
`rabbitmqctl stop_app` stops it with SIGTERM (its connections get 320
CONNECTION_FORCED, as from RabbitMQ), `start_app` and `start` bring it back on
the same ports and data, `kill` is SIGKILL.

Environment: WARREN_BIN (the binary), WARREN_CERTS (aiormq's tests/certs),
WORK_DIR (data and logs go under WORK_DIR/containers), DOCKER_API_PORT.
"""
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIN = os.environ["WARREN_BIN"]
CERTS = os.environ["WARREN_CERTS"]
ROOT = os.path.join(os.environ["WORK_DIR"], "containers")
PORT = int(os.environ.get("DOCKER_API_PORT", "2375"))

ids = itertools.count(1)
lock = threading.Lock()
containers = {}
execs = {}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, deadline_s=10.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"warren did not listen on {port} within {deadline_s}s")


def spawn(c):
    log = open(os.path.join(ROOT, f"{c['id']}.log"), "a")
    ports = c["ports"]
    c["proc"] = subprocess.Popen(
        [BIN, "--amqp-port", str(ports["5672/tcp"]), "--mgmt-port", str(ports["15672/tcp"]),
         "--metrics-port", str(free_port()), "--data-dir", os.path.join(ROOT, f"{c['id']}.data"),
         "--log-level", "info",
         "--set", f"amqp.tls_port={ports['5671/tcp']}",
         "--set", f"tls.cert_file={CERTS}/server.pem", "--set", f"tls.key_file={CERTS}/server.key",
         "--set", f"tls.ca_file={CERTS}/ca.pem", "--set", "tls.verify_peer=true"],
        stdout=log, stderr=log)
    wait_listening(ports["5672/tcp"])


def stop(c, sig):
    p = c.get("proc")
    if p and p.poll() is None:
        p.send_signal(sig)
        p.wait(30)


class Api(BaseHTTPRequestHandler):
    def reply(self, obj, code=200):
        body = json.dumps(obj).encode() if obj is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def request_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n)) if n else {}

    def object_id(self):
        return self.path.split("/")[2].split("?")[0]

    def do_GET(self):
        if self.path.startswith("/containers/"):
            c = containers[self.object_id()]
            ports = {k: [{"HostIp": "127.0.0.1", "HostPort": str(v)}] for k, v in c["ports"].items()}
            return self.reply({"Id": c["id"], "NetworkSettings": {"Ports": ports}})
        if self.path.startswith("/exec/"):
            return self.reply({"Running": False, "ExitCode": execs[self.object_id()]["rc"]})
        self.reply({"ApiVersion": "1.41"})

    def do_HEAD(self):
        self.reply(None)

    def do_POST(self):
        body = self.request_json()
        path = self.path
        if path.startswith("/images/create"):
            return self.reply({"status": "ok"})
        if path.startswith("/containers/create"):
            with lock:
                cid = str(next(ids))
                containers[cid] = {"id": cid, "ports": {p: free_port() for p in ("5672/tcp", "5671/tcp", "15672/tcp")}}
            return self.reply({"Id": cid}, 201)
        if path.startswith("/containers/"):
            c = containers[self.object_id()]
            action = path.split("/")[3].split("?")[0]
            if action == "start":
                spawn(c)
            elif action == "kill":
                stop(c, signal.SIGKILL)
            elif action == "stop":
                stop(c, signal.SIGTERM)
            elif action == "exec":
                eid = str(next(ids))
                execs[eid] = {"c": c, "cmd": body.get("Cmd", []), "rc": None}
                return self.reply({"Id": eid}, 201)
            return self.reply(None, 204)
        if path.startswith("/exec/"):
            e = execs[self.object_id()]
            if e["cmd"] == ["rabbitmqctl", "stop_app"]:
                stop(e["c"], signal.SIGTERM)
                e["rc"] = 0
            elif e["cmd"] == ["rabbitmqctl", "start_app"]:
                spawn(e["c"])
                e["rc"] = 0
            else:
                e["rc"] = 127
            return self.reply(None, 200)
        self.reply({"message": "not supported by the stand-in"}, 404)

    def do_DELETE(self):
        c = containers.pop(self.object_id(), None)
        if c:
            stop(c, signal.SIGKILL)
        self.reply(None, 204)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(ROOT)
    ThreadingHTTPServer(("127.0.0.1", PORT), Api).serve_forever()
