"""Hostile requests against the gateway and its relay, by class.

The upstream of the openai route is a stub HTTP server on 127.0.0.1 that counts its calls and the
tokens it reports (the worst case: every reply as long as ``max_tokens`` allows). Relay tests open
connections from this process and from inside real sandboxes (bwrap always; docker when an engine
answers, required under ``EVORAY_REQUIRE_DOCKER=1``).
"""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from jobs.dgm.config import GatewayConfig
from jobs.dgm.gateway import Gateway, redact
from jobs.dgm.gateway_relay import SocketRelay

KEY = "sk-proj-Zq8vN3xLr7TbW2mYk5HcJd9FgPs4Ua6E"


class Upstream(BaseHTTPRequestHandler):
    """Counts calls and reported tokens; ``error`` makes it fail quoting the key as told."""
    lock = threading.Lock()
    calls = 0
    tokens = 0
    delay = 0.0
    error: str | None = None

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(Upstream.delay)
        if Upstream.error is not None:
            status, data = 401, Upstream.error.encode()
        else:
            prompt, completion = 11, body["max_tokens"]
            with Upstream.lock:
                Upstream.calls += 1
                Upstream.tokens += prompt + completion
            status, data = 200, json.dumps({
                "choices": [{"message": {"role": "assistant", "content": "word " * completion}}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class UpstreamServer(ThreadingHTTPServer):
    request_queue_size = 128


@pytest.fixture
def upstream(monkeypatch):
    server = UpstreamServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Upstream.calls, Upstream.tokens, Upstream.delay, Upstream.error = 0, 0, 0.0, None
    monkeypatch.setenv("HOSTILE_TEST_KEY", KEY)
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture
def gateway(upstream):
    made = []

    def make(**budget) -> tuple[Gateway, str]:
        route = {"name": "gpt", "backend": "openai", "base_url": upstream,
                 "api_key_env": "HOSTILE_TEST_KEY", "input_usd_per_mtok": 1.0,
                 "output_usd_per_mtok": 4.0}
        gw = Gateway(GatewayConfig(routes=[route], **budget), None)
        made.append(gw)
        return gw, gw.start()["url"]
    yield make
    for gw in made:
        gw.stop()


def post(url: str, token: str, body=None, raw: bytes | None = None) -> tuple[int, str]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + "/chat/completions", data, method="POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def chat(content: str, **kw) -> dict:
    return {"messages": [{"role": "user", "content": content}], **kw}


class TestBudgetUnderConcurrency:
    @pytest.mark.parametrize("budget, max_tokens", [(100, 50), (1000, 50), (400, 1000)])
    def test_concurrent_requests_never_spend_past_the_token_budget(self, gateway, budget, max_tokens):
        Upstream.delay = 0.2   # all 24 are in flight together
        gw, url = gateway(max_tokens=budget)
        token = gw.issue_token("run")
        with ThreadPoolExecutor(24) as pool:
            statuses = list(pool.map(lambda i: post(url, token, chat(f"q{i}", max_tokens=max_tokens))[0],
                                     range(24)))
        usage = gw.usage("run")
        assert set(statuses) <= {200, 429} and statuses.count(200) == Upstream.calls
        assert Upstream.tokens <= budget          # what the upstream actually handed out
        assert usage["prompt_tokens"] + usage["completion_tokens"] == Upstream.tokens
        assert usage["requests"] == Upstream.calls

    def test_concurrent_requests_never_spend_past_the_cost_budget(self, gateway):
        Upstream.delay = 0.2
        gw, url = gateway(max_cost_usd=0.001)   # $1 / $4 per Mtok: about 250 reply tokens in all
        token = gw.issue_token("run")
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: post(url, token, chat("q", max_tokens=200)), range(16)))
        assert 0 < gw.usage("run")["cost_usd"] <= 0.001 and Upstream.calls >= 1

    def test_restored_usage_and_tokens_of_one_run_share_the_budget(self, gateway):
        gw, url = gateway(max_tokens=500)
        tokens = [gw.issue_token("run") for _ in range(4)]
        gw.restore_usage("run", {"prompt_tokens": 300})
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: post(url, tokens[i % 4], chat("q", max_tokens=100)), range(16)))
        assert 300 + Upstream.tokens <= 500


class TestLyingUpstream:
    @pytest.mark.parametrize("usage", [{"prompt_tokens": -10**6, "completion_tokens": 5},
                                       {"prompt_tokens": "11", "completion_tokens": 5},
                                       {"prompt_tokens": 10**9, "completion_tokens": 10**9}])
    def test_reported_usage_never_refunds_or_overspends(self, gateway, monkeypatch, usage):
        def reply(handler):
            handler.rfile.read(int(handler.headers["Content-Length"]))
            data = json.dumps({"choices": [{"message": {"content": "x"}}], "usage": usage}).encode()
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        monkeypatch.setattr(Upstream, "do_POST", reply)
        gw, url = gateway(max_tokens=1000)
        token = gw.issue_token("run")
        statuses = [post(url, token, chat("hi", max_tokens=20))[0] for _ in range(3)]
        spent = gw.usage("run")
        assert set(statuses) <= {200, 502} and spent["prompt_tokens"] >= 0
        assert 0 <= spent["prompt_tokens"] + spent["completion_tokens"] <= 1000


class TestOversizedPrompts:
    def test_a_200k_token_prompt_on_a_1000_token_budget_is_refused_before_any_call(self, gateway):
        gw, url = gateway(max_tokens=1000)
        status, body = post(url, gw.issue_token("run"), chat("word " * 200_000, max_tokens=10))
        assert status == 429 and "max_tokens" in json.loads(body)["error"]["message"]
        assert Upstream.calls == 0 and gw.usage("run")["prompt_tokens"] == 0

    def test_many_small_messages_count_as_one_big_prompt(self, gateway):
        gw, url = gateway(max_tokens=1000)
        msgs = [{"role": "user", "content": "x"} for _ in range(500)]
        assert post(url, gw.issue_token("run"), {"messages": msgs})[0] == 429 and Upstream.calls == 0

    def test_a_prompt_over_the_cost_budget_is_refused_before_any_call(self, gateway):
        gw, url = gateway(max_cost_usd=0.0001)   # $1/Mtok: 100 prompt tokens at most
        assert post(url, gw.issue_token("run"), chat("w" * 5000))[0] == 429 and Upstream.calls == 0


class TestKeyNeverLeaks:
    @pytest.mark.parametrize("error", [
        json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}}),
        json.dumps({"error": {"message": "x" * 490 + KEY}}),        # straddles the 500-char cut
        json.dumps({"error": {"message": "x" * 495 + KEY[:12]}}),
        json.dumps({"error": {"message": f"key {KEY[:8]}...{KEY[-4:]} and {KEY[10:20]} rejected"}}),
        json.dumps({"error": {"message": KEY[::1].upper() + " " + KEY[5:13]}}),
        f"<html>bad key {KEY} at {KEY[3:30]}</html>" * 20,
        json.dumps({"error": {"message": {"nested": KEY}}}),
        json.dumps({"error": {"message": json.dumps({"key": KEY})}}),
    ], ids=["whole", "at-cut", "prefix-at-cut", "fragments", "fragment-beside-noise", "html",
            "nested", "escaped"])
    def test_no_eight_character_piece_of_the_key_in_any_reply(self, gateway, error):
        gw, url = gateway()
        Upstream.error = error
        token = gw.issue_token("run")
        bodies = [post(url, token, chat("hi"))[1], post(url, token, raw=b"{}")[1]]
        Upstream.error = None
        bodies.append(post(url, token, chat(KEY))[1])   # not even echoed back through a reply
        for body in bodies:
            for i in range(len(KEY) - 7):
                assert KEY[i:i + 8] not in body, (KEY[i:i + 8], body[:300])

    def test_redact_merges_overlapping_fragments(self):
        text = f"a{KEY[:20]}b{KEY[15:]}c{KEY[4:9]}d"
        assert redact(text, [KEY]) == f"a[redacted]b[redacted]c{KEY[4:9]}d"   # 5 chars: too short


class TestMalformedRequests:
    @pytest.mark.parametrize("body, field", [
        ({"model": ["x"], **chat("hi")}, "model"),
        ({"model": {"a": 1}, **chat("hi")}, "model"),
        ({"model": 3, **chat("hi")}, "model"),
        ({"model": [], **chat("hi")}, "model"),
        ({"model": False, **chat("hi")}, "model"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [1]}, "messages[0]"),
        ({"messages": [{"role": 1, "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": ["a"]}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"text": 3}]}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": {"text": "x"}}]}, "messages[0]"),
        (chat("hi", max_tokens="5"), "max_tokens"),
        (chat("hi", max_tokens=1.5), "max_tokens"),
        (chat("hi", max_tokens=-1), "max_tokens"),
        (chat("hi", max_tokens=True), "max_tokens"),
        (chat("hi", max_completion_tokens=[1]), "max_tokens"),
        (chat("hi", temperature="hot"), "temperature"),
        (chat("hi", temperature=[1]), "temperature"),
        (chat("hi", temperature=True), "temperature"),
        (chat("hi", stop=3), "stop"),
        (chat("hi", stop=[1, 2]), "stop"),
        (chat("hi", stop={"a": 1}), "stop"),
        (chat("hi", stream=True), "stream"),
        (chat("hi", n=2), "'n'"),
        (chat("hi", top_p="x"), "top_p"),
    ])
    def test_bad_fields_are_400s_naming_the_field(self, gateway, body, field):
        gw, url = gateway()
        status, reply = post(url, gw.issue_token("run"), body)
        assert status == 400 and field in json.loads(reply)["error"]["message"], reply
        assert Upstream.calls == 0

    @pytest.mark.parametrize("raw", [
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e999}',
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe not utf-8",
        b'"just a string"',
    ], ids=["nan", "infinity", "deep", "bytes", "string"])
    def test_bad_bodies_are_400s(self, gateway, raw):
        gw, url = gateway()
        assert post(url, gw.issue_token("run"), raw=raw)[0] == 400 and Upstream.calls == 0

    def test_a_bad_content_length_is_a_400(self, gateway):
        _, url = gateway()
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.0 400")


def relay_for(gw: Gateway, **kw) -> SocketRelay:
    url = urlsplit(gw.start()["url"])
    return SocketRelay((url.hostname, url.port), **kw)


def relay_threads() -> int:
    return sum(t.name.startswith("relay-") for t in threading.enumerate())


def open_many(path: str, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        socks.append(s)
    return socks


def refused(s: socket.socket) -> bool:
    s.settimeout(2)
    try:
        return s.recv(100).startswith(b"HTTP/1.1 503")
    except TimeoutError:
        return False


class TestRelayBounds:
    def test_200_connections_from_one_sandbox_get_8_and_bounded_threads(self, gateway):
        gw, _ = gateway()
        before = threading.active_count()
        base = relay_threads()
        relay = relay_for(gw, per_peer=8)
        socks = open_many(relay.path, 200)
        try:
            time.sleep(0.5)
            assert relay.connections() == 8 and relay_threads() - base <= 1 + 2 * 8
            assert threading.active_count() - before <= 1 + 3 * 8   # + the gateway's handlers
            assert sum(refused(s) for s in socks[8:]) == 192
        finally:
            for s in socks:
                s.close()
            relay.close()

    def test_idle_connections_are_dropped_and_their_slots_freed(self, gateway):
        gw, _ = gateway()
        relay = relay_for(gw, per_peer=2, idle_s=1.0)
        try:
            socks = open_many(relay.path, 2)
            time.sleep(0.3)
            assert relay.connections() == 2 and refused(open_many(relay.path, 1)[0])
            deadline = time.monotonic() + 10
            while relay.connections() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert relay.connections() == 0
            assert all(s.recv(10) == b"" for s in socks)   # closed by the relay
            token = gw.issue_token("run")
            s = open_many(relay.path, 1)[0]
            body = json.dumps(chat("hi", max_tokens=3)).encode()
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                      + token.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            assert s.recv(100).startswith(b"HTTP/1.0 200")   # a fresh slot works
        finally:
            relay.close()

    def test_a_request_waiting_for_its_reply_is_not_idle(self, gateway):
        Upstream.delay = 2.0   # longer than the idle limit
        gw, _ = gateway()
        relay = relay_for(gw, idle_s=0.5)
        try:
            s = open_many(relay.path, 1)[0]
            body = json.dumps(chat("hi", max_tokens=3)).encode()
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                      + gw.issue_token("r").encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
                      + body)
            s.settimeout(10)
            assert s.recv(100).startswith(b"HTTP/1.0 200")
        finally:
            relay.close()


@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_a_sandbox_opening_200_connections_gets_8_and_the_host_stays_bounded(backend, request, gateway):
    from actors.sandbox import ExecRequest, SandboxLimits, make_sandbox
    if backend == "docker":
        request.getfixturevalue("docker_engine")
    gw, _ = gateway()
    relay = relay_for(gw, per_peer=8)
    limits = SandboxLimits(timeout_s=20)
    sb = make_sandbox(backend, limits, gateway_dir=relay.dir)
    code = ("import socket, time\nsocks, busy = [], 0\nfor _ in range(200):\n"
            "    s = socket.socket(socket.AF_UNIX)\n    s.connect('/run/evoray/gateway.sock')\n"
            "    socks.append(s)\ntime.sleep(3)\nfor s in socks:\n    s.setblocking(False)\n"
            "    try:\n        busy += s.recv(20).startswith(b'HTTP/1.1 503')\n"
            "    except BlockingIOError:\n        pass\nprint(busy)\n")
    base = relay_threads()   # idle links of earlier tests' relays may still be winding down
    peak, out = base, {}
    runner = threading.Thread(target=lambda: out.setdefault("r", sb.run(ExecRequest.program(code, limits=limits))))
    try:
        runner.start()
        while runner.is_alive():
            peak = max(peak, relay_threads())
            time.sleep(0.05)
        r = out["r"]
        assert r.status == "ok" and r.stdout.strip() == "192", (r.stdout, r.stderr[-500:])
        assert 2 * 8 >= peak - base >= 2   # it did get through, and no further
    finally:
        sb.close()
        relay.close()
