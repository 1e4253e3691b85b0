#!/usr/bin/env python3
"""Runs the examples of README.md, docs/*.md and examples/*/README.md against a live `agently up`.

A doc example that no longer works fails the suite. One `agently up` (embedded Postgres, a
free port) serves every document; each document gets its own admin user (so documents do not
see each other's workflows and runs) and its own scratch directory laid out like the
repository (`build/agently`, `examples/`, and `.agently/admin-token` holding that user's
token, where `agently up` would have written it). Blocks run in document order; shell state
(variables, exports) carries from one block to the next within a document.

What each fenced block means (the rules are documented in docs/testing.md):

  ```sh       every command runs in bash in the scratch directory and must exit 0
  ```console  a transcript: `$ ` lines are commands; the lines after one are its expected
              output (stdout, then stderr), compared; a command must exit 0 unless the
              output shown is an error (a line `error: ...`, or a JSON {"error": ...})
  ```json     a workflow (an object with "nodes"): applied and run to completion; a node
              (or several), or a member such as "retry": validated inside a generated workflow
  ```text     an illustration (a grammar, an output format, a diagram): not run

Any other language, or a fence with no language, is an error unless the block is skipped.
An HTML comment on the line before a fence steers it:

  <!-- doc-test: skip (why) -->        not run; the reason is required
  <!-- doc-test: file NAME -->         json only: written to NAME for later commands, not run
  <!-- doc-test: input {...} -->       json workflow only: the run's input (default {})

Outside URLs are served by a local stand-in: `http(s)://<host>.example.com/...` becomes
`http://127.0.0.1:<stand-in port>/<host>.example.com/...` in commands and workflows, and
`127.0.0.1:8080` (agently up's default address) becomes the address of this document's
`agently up`. Output is mapped back before it is compared, so the docs keep readable URLs.
The stand-in answers with tests/docs/stand-ins.json where a route matches (its JSON "body", or
its "text" with its "content_type", e.g. a streamed LLM answer), otherwise 200 with an echo of
the request: {"method", "path", "headers" (lower-case names), "body"}.

E-mail goes to a real local SMTP server (tests/support/notify_receiver.py, Debian's
python3-aiosmtpd): `agently up` runs with AGENTLY_SMTP_URL pointing at it, as a reader of
examples/chase-document/README.md runs it with `python3 -m aiosmtpd`. At the end the runner
prints how many messages it received.

In expected output, `…` matches any text within a line, and a line holding only `…` matches
any number of lines. When the expected output is JSON, it is compared as JSON: an object's
members that the doc leaves out are not compared. A placeholder such as `<run-id>` in a
command is replaced by the last id an earlier command printed.

usage: doc_examples.py --agently BINARY --source DIR [--only FILE...] [--keep]
"""
import argparse
import ctypes
import fnmatch
import glob
import http.server
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

COMMAND_TIMEOUT = 45  # seconds for one command (a --wait or --follow included)
UP_TIMEOUT = 90  # seconds for `agently up` to answer /readyz
BUDGET = 240  # seconds for everything, well inside ctest's TIMEOUT (tests/docs/CMakeLists.txt)
DEADLINE = time.monotonic() + BUDGET
DOC_PORT = "127.0.0.1:8080"
DIRECTIVE = re.compile(r"^<!--\s*doc-test:\s*(\w+)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^( {0,3})(```+)\s*([A-Za-z0-9_+-]*)\s*$")
OUTSIDE_URL = re.compile(r"https?://([A-Za-z0-9.-]*example\.com)")
PLACEHOLDER = re.compile(r"<[a-z]+(?:-[a-z]+)*-id>|<id>")
ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
RUN_LANGUAGES = ("sh", "console", "json")
NODE_MEMBERS = ("retry", "timeout", "on_failure", "delivery", "when", "after", "description")


def die_with_parent(sig):
    """For Popen's preexec_fn: the child gets sig when this runner dies (a ctest timeout kills
    it), so neither `agently up` (which then stops its Postgres) nor a shell outlives it."""
    def preexec():
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    return preexec


class DocError(Exception):
    """A doc example that does not do what the doc says (or a block the runner cannot read)."""


# --------------------------------------------------------------------------------------------
# Markdown: fenced blocks with the directive before each


class Block:
    def __init__(self, path, line, language, text, directives):
        self.path, self.line, self.language, self.text = path, line, language, text
        self.directives = directives

    def where(self):
        return "%s:%d" % (self.path, self.line)


def read_blocks(path, relpath):
    pending, lines = {}, open(path, encoding="utf-8").read().split("\n")
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        d = DIRECTIVE.match(line.strip())
        if d:
            pending[d.group(1)] = d.group(2)
            i += 1
            continue
        f = FENCE.match(line)
        if not f:
            if line.strip():
                pending = {}
            i += 1
            continue
        indent, ticks, language = f.group(1), f.group(2), f.group(3)
        body, j = [], i + 1
        while j < len(lines) and not re.match(r"^ {0,3}" + ticks + r"\s*$", lines[j]):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise DocError("%s:%d: the fence is never closed" % (relpath, i + 1))
        out.append(Block(relpath, i + 1, language, "\n".join(body) + "\n", pending))
        pending = {}
        i = j + 1
    return out


# --------------------------------------------------------------------------------------------
# The stand-in for outside services


class StandIn:
    def __init__(self, routes_path):
        with open(routes_path, encoding="utf-8") as f:
            self.routes = json.load(f)["routes"]
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                target = self.path.lstrip("/")
                status, body, answer, ctype = 200, None, None, "application/json"
                for r in routes:
                    if r.get("method", self.command) == self.command and fnmatch.fnmatchcase(
                            target, r["url"]):
                        status, body = r.get("status", 200), r.get("body")
                        answer, ctype = r.get("text"), r.get("content_type", ctype)
                        break
                else:
                    text = raw.decode("utf-8", "replace")
                    try:
                        parsed = json.loads(text) if text else None
                    except ValueError:
                        parsed = text
                    body = {"method": self.command, "path": "/" + target.split("/", 1)[-1],
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": parsed}
                data = answer.encode() if answer is not None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class MailSink:
    """A real SMTP server (tests/support/notify_receiver.py: Debian's python3-aiosmtpd, which it
    imports through its own /usr/bin/python3) that agently up's dispatcher delivers to."""

    def __init__(self, source):
        path = os.path.join(source, "tests", "support", "notify_receiver.py")
        self.proc = subprocess.Popen([path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True,
                                     preexec_fn=die_with_parent(signal.SIGKILL))
        ready = self.proc.stdout.readline().split()
        if len(ready) != 3 or ready[0] != "ready":
            raise DocError("the SMTP server did not start (%s)" % " ".join(ready))
        self.http_port, self.smtp_port = int(ready[1]), int(ready[2])

    def messages(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/state" % self.http_port,
                                    timeout=5) as r:
            return json.load(r)["mail_messages"]

    def close(self):
        self.proc.kill()
        self.proc.wait()


# --------------------------------------------------------------------------------------------
# One document's world: a scratch directory, `agently up`, a bash that keeps its state


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Up:
    """The one `agently up` every document talks to (embedded Postgres, a free port)."""

    def __init__(self, args, mail):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="agently-doc-up-")
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.server = "http://127.0.0.1:%d" % self.port
        self.env = dict(os.environ)
        self.env["AGENTLY_DATABASE_URL"] = ""  # the embedded Postgres, as a newcomer runs it
        for k in ("AGENTLY_TOKEN", "AGENTLY_DATA_DIR", "AGENTLY_SERVER"):
            self.env.pop(k, None)
        self.env.update({"AGENTLY_SMTP_URL": "smtp://127.0.0.1:%d" % mail.smtp_port,
                         "AGENTLY_SMTP_TLS": "none", "AGENTLY_SMTP_FROM": "agently@example.com"})
        self.log_path = os.path.join(self.dir, "up.log")
        self.proc = subprocess.Popen(
            [args.agently, "up", "--data-dir", os.path.join(self.dir, ".agently"), "--port",
             str(self.port), "--workers", "1"], cwd=self.dir, env=self.env,
            stdin=subprocess.DEVNULL, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
        self.token_path = os.path.join(self.dir, ".agently", "admin-token")
        deadline = time.monotonic() + UP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DocError("agently up exited with %d:\n%s" % (self.proc.returncode,
                                                                    self.log()))
            try:
                with urllib.request.urlopen(self.server + "/readyz", timeout=2) as r:
                    if r.status == 200 and os.path.exists(self.token_path):
                        break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise DocError("agently up did not become ready in %ds:\n%s" % (UP_TIMEOUT,
                                                                            self.log()))
        self.token = open(self.token_path).read().strip()

    def log(self):
        try:
            return open(self.log_path, errors="replace").read()[-4000:]
        except OSError:
            return ""

    def cli(self, *argv):
        env = dict(self.env, AGENTLY_SERVER=self.server, AGENTLY_TOKEN=self.token)
        try:
            r = subprocess.run([self.args.agently] + list(argv), env=env, capture_output=True,
                               text=True, timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise DocError("agently %s: no answer in %d s" % (" ".join(argv), COMMAND_TIMEOUT))
        if r.returncode != 0:
            raise DocError("agently %s: exit %d: %s" % (" ".join(argv), r.returncode, r.stderr))
        return r.stdout

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise DocError("agently up did not stop within 90 s:\n" + self.log())
        code = self.proc.returncode
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        if code != 0:
            raise DocError("agently up exited with %d:\n%s" % (code, self.log()))


class World:
    """One document's world: a scratch directory laid out like the repository (build/agently,
    examples/), its own admin user (so documents do not see each other's workflows and runs)
    whose token is the scratch directory's .agently/admin-token, and a bash that keeps its
    state from one command to the next."""

    def __init__(self, args, up, standin, doc, serial):
        self.args, self.up, self.standin, self.doc = args, up, standin, doc
        self.dir = tempfile.mkdtemp(prefix="agently-doc-")
        os.makedirs(os.path.join(self.dir, "build"))
        os.symlink(args.agently, os.path.join(self.dir, "build", "agently"))
        os.symlink(os.path.join(args.source, "examples"), os.path.join(self.dir, "examples"))
        user = "doc%d-%s" % (serial, re.sub(r"[^a-z0-9]+", "-", doc.lower()).strip("-"))
        up.cli("user", "create", user, "--admin")
        token = up.cli("token", "create", "--user", user, "--name", "doc-test").strip()
        os.makedirs(os.path.join(self.dir, ".agently"), mode=0o700)
        fd = os.open(os.path.join(self.dir, ".agently", "admin-token"),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, (token + "\n").encode())
        os.close(fd)
        self.port = up.port
        self.env = dict(up.env)
        self.env.update({
            "PATH": os.path.dirname(args.agently) + os.pathsep + self.env.get("PATH", ""),
            "AGENTLY_SERVER": up.server,  # stands for the default, 127.0.0.1:8080
            "NO_COLOR": "1",
        })
        self.last_ids, self.counter = [], 0
        status_r, status_w = os.pipe()
        self.bash = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=self.dir, env=self.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, pass_fds=(status_w,),
                                     start_new_session=True,
                                     preexec_fn=die_with_parent(signal.SIGKILL))
        os.close(status_w)
        self.status_fd = status_w
        self.status = os.fdopen(status_r, "r")

    # --- mapping between the doc's addresses and this world's
    def to_world(self, text):
        text = text.replace(DOC_PORT, "127.0.0.1:%d" % self.port)
        return OUTSIDE_URL.sub(lambda m: "http://127.0.0.1:%d/%s" % (self.standin.port, m.group(1)),
                               text)

    def to_doc(self, text):
        text = re.sub(r"http://127\.0\.0\.1:%d/([A-Za-z0-9.-]*example\.com)" % self.standin.port,
                      r"https://\1", text)
        return text.replace("127.0.0.1:%d" % self.port, DOC_PORT)

    def stop(self):
        try:
            os.killpg(self.bash.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.bash.wait()
        self.status.close()
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print("  kept %s" % self.dir)

    # --- commands
    def substitute(self, command, where):
        def one(m):
            if not self.last_ids:
                raise DocError("%s: %s needs an id, but no earlier command printed one" %
                               (where, m.group(0)))
            return self.last_ids[-1]
        return PLACEHOLDER.sub(one, command)

    def run(self, command, where):
        """Runs one command in the document's bash; returns (exit code, stdout, stderr)."""
        self.counter += 1
        out = os.path.join(self.dir, ".cmd-%d.out" % self.counter)
        err = os.path.join(self.dir, ".cmd-%d.err" % self.counter)
        real = self.to_world(self.substitute(command, where))
        script = "{ %s\n} >'%s' 2>'%s' </dev/null; echo $? >&%d\n" % (real, out, err,
                                                                      self.status_fd)
        self.bash.stdin.write(script.encode())
        self.bash.stdin.flush()
        limit = max(0, min(COMMAND_TIMEOUT, DEADLINE - time.monotonic()))
        ready, _, _ = select.select([self.status], [], [], limit)
        if not ready:
            raise DocError("%s: `%s` did not finish within %d s%s" % (
                where, command, limit,
                "" if limit == COMMAND_TIMEOUT else " (the test's %d s are spent)" % BUDGET))
        line = self.status.readline()
        if not line:
            raise DocError("%s: the shell exited during `%s`" % (where, command))
        stdout = self.to_doc(open(out, errors="replace").read())
        stderr = self.to_doc(open(err, errors="replace").read())
        self.last_ids.extend(ID.findall(stdout))
        return int(line), stdout, stderr


# --------------------------------------------------------------------------------------------
# Comparing output


def line_matches(expected, actual):
    parts = [re.escape(p) for p in expected.split("…")]
    return re.fullmatch(".*".join(parts), actual) is not None


def lines_match(expected, actual):
    """Expected lines against actual ones; a line that is only … matches any number."""
    if not expected:
        return not actual
    if expected[0].strip() == "…":
        return any(lines_match(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and line_matches(expected[0], actual[0]) and lines_match(
        expected[1:], actual[1:])


def json_match(expected, actual, path="$"):
    """None when actual shows what expected shows, else where it differs."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return "%s: expected an object, got %s" % (path, json.dumps(actual))
        for k, v in expected.items():
            if k not in actual:
                return "%s: no member %s" % (path, json.dumps(k))
            d = json_match(v, actual[k], "%s.%s" % (path, k))
            if d:
                return d
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return "%s: expected %s, got %s" % (path, json.dumps(expected), json.dumps(actual))
        for i, (e, a) in enumerate(zip(expected, actual)):
            d = json_match(e, a, "%s[%d]" % (path, i))
            if d:
                return d
        return None
    if isinstance(expected, str) and isinstance(actual, str) and line_matches(expected, actual):
        return None
    if expected == actual and type(expected) is type(actual):
        return None
    return "%s: expected %s, got %s" % (path, json.dumps(expected), json.dumps(actual))


def compare_output(expected_text, stdout, stderr):
    """None when the output is what the doc shows, else a description of the difference."""
    try:
        expected = json.loads(expected_text)
    except ValueError:
        expected = None
    if expected is not None and expected_text.strip()[:1] in "{[":
        try:
            actual = json.loads(stdout)
        except ValueError:
            return "the doc shows JSON, the command printed:\n%s%s" % (stdout, stderr)
        diff = json_match(expected, actual)
        return diff and "%s\nthe command printed:\n%s" % (diff, stdout[:3000])
    exp = [l.rstrip() for l in expected_text.rstrip("\n").split("\n")]
    act = [l.rstrip() for l in (stdout + stderr).rstrip("\n").split("\n")] if (stdout +
                                                                                 stderr) else []
    if lines_match(exp, act):
        return None
    return "the doc shows:\n%s\nthe command printed:\n%s" % ("\n".join(exp), "\n".join(act))


# --------------------------------------------------------------------------------------------
# Running each kind of block


def split_commands(text):
    """Commands of a sh block: continuation lines and here-documents stay with their command."""
    commands, current, heredoc = [], [], None
    for line in text.rstrip("\n").split("\n"):
        if heredoc:
            current.append(line)
            if line.strip() == heredoc:
                heredoc = None
                commands.append("\n".join(current))
                current = []
            continue
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current.append(line)
        h = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if h:
            heredoc = h.group(1)
        elif not line.endswith("\\"):
            commands.append("\n".join(current))
            current = []
    if current:
        commands.append("\n".join(current))
    return commands


def run_sh(world, block):
    for command in split_commands(block.text):
        code, stdout, stderr = world.run(command, block.where())
        if code != 0:
            raise DocError("%s: `%s` exited with %d\nstdout:\n%sstderr:\n%s" %
                           (block.where(), command, code, stdout, stderr))


def run_console(world, block):
    steps = []  # [command, [expected lines]]
    lines = block.text.rstrip("\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = [line[2:]]
            while command[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                command.append(lines[i])
            steps.append(["\n".join(command), []])
        elif steps:
            steps[-1][1].append(line)
        elif line.strip():
            raise DocError("%s: a console block starts with `$ command`" % block.where())
        i += 1
    for command, expected in steps:
        code, stdout, stderr = world.run(command, block.where())
        shown = "\n".join(expected).strip("\n")
        if code != 0 and not shows_error(shown):
            raise DocError("%s: `%s` exited with %d\nstdout:\n%sstderr:\n%s" %
                           (block.where(), command, code, stdout, stderr))
        diff = compare_output(shown, stdout, stderr) if shown else None
        if diff:
            raise DocError("%s: `%s` (exit %d): %s" % (block.where(), command, code, diff))


def shows_error(shown):
    """Whether the output a doc shows is an error: a line `error: ...` or {"error": ...}."""
    if any(line.startswith("error:") for line in shown.split("\n")):
        return True
    try:
        value = json.loads(shown)
    except ValueError:
        return False
    return isinstance(value, dict) and "error" in value


def json_values(text):
    """The JSON values of a block: one, several in a row, or members ("retry": {...})."""
    decoder, values, pos, text = json.JSONDecoder(), [], 0, text.strip()
    try:
        while pos < len(text):
            value, end = decoder.raw_decode(text, pos)
            values.append(value)
            pos = end
            while pos < len(text) and text[pos].isspace():
                pos += 1
        return values, False
    except ValueError:
        pass
    try:
        return [json.loads("{" + text + "}")], True
    except ValueError as e:
        raise DocError("not JSON: %s" % e)


def upstream_ids(node):
    """Ids a fragment refers to that it needs in its workflow."""
    ids = set(node.get("after", [])) | set(node.get("then", [])) | set(node.get("else", []))
    text = json.dumps(node)
    ids |= set(re.findall(r"nodes\.([A-Za-z][A-Za-z0-9_]*)", text))
    ids |= set(re.findall(r"nodes\[\\?[\"']([^\"'\\]+)\\?[\"']\]", text))
    return ids - {node.get("id")}


def apply_workflow(world, block, definition):
    path = os.path.join(world.dir, ".workflow-%d.json" % (world.counter + 1))
    with open(path, "w", encoding="utf-8") as f:
        f.write(world.to_world(json.dumps(definition)))
    code, stdout, stderr = world.run("agently workflow apply %s" % shlex.quote(path),
                                     block.where())
    if code != 0:
        raise DocError("%s: the workflow does not apply:\n%s%s" % (block.where(), stdout,
                                                                  stderr))


def run_json(world, block):
    try:
        values, members = json_values(block.text)
    except DocError as e:
        raise DocError("%s: %s" % (block.where(), e))
    if "file" in block.directives:
        name = block.directives["file"]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise DocError("%s: file name '%s' is not a plain file name" % (block.where(), name))
        with open(os.path.join(world.dir, name), "w", encoding="utf-8") as f:
            f.write(world.to_world(block.text))
        return
    if len(values) == 1 and isinstance(values[0], dict) and "nodes" in values[0]:
        wf = values[0]
        apply_workflow(world, block, wf)
        data = block.directives.get("input", "{}")
        try:
            json.loads(data)
        except ValueError as e:
            raise DocError("%s: doc-test input is not JSON: %s" % (block.where(), e))
        code, stdout, stderr = world.run(
            "agently run start %s --input %s --wait" % (shlex.quote(wf["name"]), shlex.quote(data)),
            block.where())
        if code != 0:
            raise DocError("%s: the run of workflow %s did not complete (exit %d):\n%s%s" %
                           (block.where(), wf["name"], code, stdout, stderr))
        return
    stub = {"type": "http", "request": {"url": "http://%s/healthz" % DOC_PORT}}
    if members:
        if not set(values[0]) <= set(NODE_MEMBERS):
            raise DocError("%s: members %s are not node fields" % (block.where(),
                                                                   sorted(values[0])))
        nodes = [dict(stub, id="fragment", **values[0])]
    elif all(isinstance(v, dict) and "type" in v for v in values):
        nodes = [dict(v) for v in values]
    else:
        raise DocError("%s: a json block must be a workflow, nodes or node fields; show data "
                       "as a command's output (```console) or skip it with a reason" %
                       block.where())
    known = {n.get("id") for n in nodes}
    for n in list(nodes):
        for up in sorted(upstream_ids(n) - known):
            nodes.insert(0, {"id": up, "type": "noop"})
            known.add(up)
    apply_workflow(world, block, {"name": "doc-fragment-%d" % block.line, "nodes": nodes})


RUNNERS = {"sh": run_sh, "console": run_console, "json": run_json}


# --------------------------------------------------------------------------------------------


def check_block(block):
    """Problems with a block's marking, whatever happens when it runs."""
    skip = block.directives.get("skip")
    if skip is not None and not re.fullmatch(r"\(.*\S.*\)", skip):
        return "%s: `doc-test: skip` needs a reason in parentheses" % block.where()
    if skip is None and block.language not in RUN_LANGUAGES + ("text",):
        if not block.language:
            return ("%s: a fence needs a language: sh, console or json to run it, text for an "
                    "illustration" % block.where())
        return ("%s: ```%s blocks are not run; mark the block `<!-- doc-test: skip (why) -->` "
                "or use text" % (block.where(), block.language))
    unknown = set(block.directives) - {"skip", "file", "input"}
    if unknown:
        return "%s: unknown doc-test directive %s" % (block.where(), ", ".join(sorted(unknown)))
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--agently", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--only", nargs="*")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    args.agently = os.path.abspath(args.agently)
    args.source = os.path.abspath(args.source)

    docs = ["README.md"] + sorted(
        os.path.relpath(p, args.source) for p in glob.glob(os.path.join(args.source, "docs",
                                                                        "*.md"))) + sorted(
        os.path.relpath(p, args.source) for p in glob.glob(os.path.join(args.source, "examples",
                                                                        "*", "README.md")))
    if args.only:
        docs = [d for d in docs if d in args.only or os.path.basename(d) in args.only]
    failures, ran, skipped = [], 0, 0
    started = time.monotonic()
    standin = StandIn(os.path.join(args.source, "tests", "docs", "stand-ins.json"))
    mail = None
    work = []
    for doc in docs:
        try:
            blocks = read_blocks(os.path.join(args.source, doc), doc)
        except DocError as e:
            failures.append(str(e))
            continue
        problems = [p for p in map(check_block, blocks) if p]
        failures.extend(problems)
        skipped += sum(1 for b in blocks if "skip" in b.directives)
        todo = [b for b in blocks if "skip" not in b.directives and b.language in RUNNERS]
        if todo and not problems:
            work.append((doc, todo))
    up = None
    try:
        if work:
            mail = MailSink(args.source)
            up = Up(args, mail)
            print("agently up ready in %.1fs" % (time.monotonic() - started))
        for serial, (doc, todo) in enumerate(work, 1):
            t0 = time.monotonic()
            world = World(args, up, standin, doc, serial)
            try:
                for b in todo:
                    RUNNERS[b.language](world, b)
                    ran += 1
            except DocError as e:
                failures.append(str(e))
            finally:
                world.stop()
            print("%-24s %2d block(s) in %.1fs" % (doc, len(todo), time.monotonic() - t0))
            sys.stdout.flush()
    except DocError as e:
        failures.append(str(e))
    finally:
        if up:
            try:
                up.stop()
            except DocError as e:
                failures.append(str(e))
    standin.close()
    if mail:
        try:
            print("e-mail: %d message(s) reached the SMTP server" % len(mail.messages()))
        except OSError as e:
            failures.append("could not read the SMTP server's state: %s" % e)
        mail.close()
    print("doc examples: %d run, %d skipped, %d failure(s), %.1fs" %
          (ran, skipped, len(failures), time.monotonic() - started))
    for f in failures:
        print("\nFAIL " + f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
