#!/usr/bin/python3
"""The outside world of the notification tests: a webhook receiver that verifies Standard
Webhooks signatures (an implementation independent of src/notify, written from the spec),
a Slack incoming-webhook stand-in, and a real SMTP server (Debian's python3-aiosmtpd).
Every receiver deduplicates by the delivery id as a careful receiver would, counting raw
deliveries per id, and notes a delivery that arrives while another with the same id is
still being answered (two dispatchers delivering one notification at once).

With --tls DIR it also generates a test CA and a server certificate for 127.0.0.1 signed by
it (openssl; DIR/ca.pem is what a client must trust) and runs two more SMTP servers that
require STARTTLS and then AUTH as --auth USER:PASSWORD, one offering only LOGIN and one only
PLAIN, each recording the mechanism a message was sent under (mail_auth) and refused logins
(auth_refused). The first SMTP server stays plain text and offers no STARTTLS.

Usage: notify_receiver.py [--secret whsec_...] [--tls DIR --auth USER:PASSWORD]
  prints "ready HTTP_PORT SMTP_PORT" (with --tls: "... LOGIN_PORT PLAIN_PORT").
  POST /hook?delay_ms=N&fail=N&status=S   webhook (the first N deliveries of each id answer S)
  POST /slack                             Slack stand-in (checks text and blocks)
  GET  /state                             everything seen, as JSON
"""
import argparse
import base64
import hashlib
import hmac
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from email import message_from_bytes
from email.header import decode_header, make_header
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

LOCK = threading.Lock()
STATE = {
    "hooks": {},          # webhook-id -> raw deliveries
    "hook_bodies": {},    # webhook-id -> first body (parsed)
    "bad_signatures": 0,
    "concurrent": 0,      # deliveries of an id that arrived while one was in flight
    "slack": {},          # X-Agently-Notification-Id -> raw deliveries
    "slack_bodies": {},
    "mail": {},           # Message-ID -> raw deliveries
    "mail_messages": {},  # Message-ID -> {"from", "to", "subject", "body"}
    "mail_auth": {},      # Message-ID -> {"mechanism", "user", "tls"} (the --tls servers)
    "auth_refused": 0,    # logins refused by the --tls servers
}
IN_FLIGHT = set()
FAILED = {}
SECRET = None


def verify(headers, body):
    """Standard Webhooks verification, as docs/notifications.md tells receivers to do it."""
    msg_id = headers.get("webhook-id")
    ts = headers.get("webhook-timestamp")
    sigs = headers.get("webhook-signature", "")
    if not msg_id or not ts:
        return False
    if abs(time.time() - int(ts)) > 300:
        return False
    key = SECRET[len("whsec_"):] if SECRET.startswith("whsec_") else None
    key = base64.b64decode(key) if key is not None else SECRET.encode()
    want = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body,
                                     hashlib.sha256).digest()).decode()
    return any(s.startswith("v1,") and hmac.compare_digest(s[3:], want) for s in sigs.split())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, obj):
        data = json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the sender is gone (a dispatcher killed mid-delivery): so be it

    def do_GET(self):
        with LOCK:
            snapshot = json.loads(json.dumps(STATE))
        self.answer(200, snapshot)

    def do_POST(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if url.path == "/hook":
            if SECRET and not verify(self.headers, body):
                with LOCK:
                    STATE["bad_signatures"] += 1
                return self.answer(401, {"error": "bad signature"})
            msg_id = self.headers.get("webhook-id", "")
            key = ("hooks", "hook_bodies")
        elif url.path == "/slack":
            msg_id = self.headers.get("X-Agently-Notification-Id", "")
            parsed = json.loads(body)
            if not isinstance(parsed.get("text"), str) or not isinstance(parsed.get("blocks"), list):
                return self.answer(400, {"error": "not a slack message"})
            key = ("slack", "slack_bodies")
        else:
            return self.answer(404, {"error": "no such path"})
        with LOCK:
            if msg_id in IN_FLIGHT:
                STATE["concurrent"] += 1
            IN_FLIGHT.add(msg_id)
            fail_left = int(q.get("fail", "0")) - FAILED.get(msg_id, 0)
            if fail_left > 0:
                FAILED[msg_id] = FAILED.get(msg_id, 0) + 1
        try:
            time.sleep(int(q.get("delay_ms", "0")) / 1000.0)
            if fail_left > 0:
                return self.answer(int(q.get("status", "500")), {"error": "failing on purpose"})
            with LOCK:
                STATE[key[0]][msg_id] = STATE[key[0]].get(msg_id, 0) + 1
                STATE[key[1]].setdefault(msg_id, json.loads(body))
            self.answer(200, {"ok": True})
        finally:
            with LOCK:
                IN_FLIGHT.discard(msg_id)


class Mail:
    async def handle_DATA(self, server, session, envelope):
        msg = message_from_bytes(envelope.content)
        msg_id = msg.get("Message-ID", "")
        with LOCK:
            if session.authenticated:
                STATE["mail_auth"][msg_id] = {"mechanism": session.auth_data["mechanism"],
                                              "user": session.auth_data["user"],
                                              "tls": session.ssl is not None}
            STATE["mail"][msg_id] = STATE["mail"].get(msg_id, 0) + 1
            STATE["mail_messages"].setdefault(msg_id, {
                "from": envelope.mail_from,
                "to": envelope.rcpt_tos,
                "subject": str(make_header(decode_header(msg.get("Subject", "")))),
                "notification_id": msg.get("X-Agently-Notification-Id", ""),
                "body": msg.get_payload(decode=True).decode("utf-8"),
            })
        return "250 OK"


class Authenticator:
    """Accepts exactly USER:PASSWORD, over TLS only (the servers refuse AUTH before STARTTLS)."""

    def __init__(self, credentials):
        self.user, self.password = credentials.split(":", 1)

    def __call__(self, server, session, envelope, mechanism, auth_data):
        if (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.user
                and auth_data.password.decode() == self.password):
            return AuthResult(success=True,
                              auth_data={"mechanism": mechanism, "user": self.user})
        with LOCK:
            STATE["auth_refused"] += 1
        return AuthResult(success=False, handled=False)


def make_certificates(directory):
    """A test CA and a server certificate for 127.0.0.1 signed by it, with openssl."""
    def run(*argv):
        subprocess.run(["openssl"] + list(argv), cwd=directory, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=agently test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    with open(f"{directory}/server.ext", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(f"{directory}/server.pem", f"{directory}/server.key")
    return ctx


def free_port():
    # aiosmtpd 1.4 connects to its own port to check it is up, so it needs a real number
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def main():
    global SECRET
    ap = argparse.ArgumentParser()
    ap.add_argument("--secret")
    ap.add_argument("--tls")
    ap.add_argument("--auth", default="agently:password")
    args = ap.parse_args()
    SECRET = args.secret
    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    http.daemon_threads = True
    port = free_port()
    servers = [Controller(Mail(), hostname="127.0.0.1", port=port)]
    ports = [port]
    if args.tls:
        ctx = make_certificates(args.tls)
        for only in ("LOGIN", "PLAIN"):
            ports.append(free_port())
            servers.append(Controller(
                Mail(), hostname="127.0.0.1", port=ports[-1], tls_context=ctx,
                require_starttls=True, auth_required=True, auth_require_tls=True,
                authenticator=Authenticator(args.auth),
                auth_exclude_mechanism=["PLAIN" if only == "LOGIN" else "LOGIN"]))
    for smtp in servers:
        smtp.start()
    print("ready %d %s" % (http.server_address[1], " ".join(map(str, ports))), flush=True)
    try:
        http.serve_forever()
    finally:
        for smtp in servers:
            smtp.stop()


if __name__ == "__main__":
    sys.exit(main())
