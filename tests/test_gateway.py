"""Tests for jobs/dgm/gateway.py and the sandbox's stdlib client (jobs/dgm/seed_agent/llm_client.py).

No Ray and no real model: the backends are recorded replies, a fake OpenAI upstream served from
the test, and small fake samplers; one test runs the real ``Sampler.chat`` on the tiny test model.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import tempfile
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from jobs.dgm.gateway import BACKENDS, Gateway, GatewayConfig, ModelRoute, apply_stop

REPO = Path(__file__).resolve().parent.parent
SECRET = "sk-test-SECRET-0123456789"


def load_client():
    """The client as the sandbox sees it: a file, imported by path, not through the package."""
    spec = importlib.util.spec_from_file_location(
        "llm_client_under_test", REPO / "jobs/dgm/seed_agent/llm_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def replies_file(tmp_path, rules) -> str:
    path = tmp_path / "replies.yaml"
    path.write_text(yaml.safe_dump(rules))
    return str(path)


def replay_cfg(tmp_path, rules, **kw) -> GatewayConfig:
    route = {"name": "replay", "backend": "replay", "replies": replies_file(tmp_path, rules),
             **kw.pop("route", {})}
    return GatewayConfig(routes=[route], **kw)


@pytest.fixture
def started():
    """Start gateways and stop them after the test, whatever happens."""
    gateways = []

    def start(cfg, socket_path=None, samplers=None):
        gw = Gateway(cfg, socket_path, samplers)
        gateways.append(gw)
        return gw, gw.start()

    yield start
    for gw in gateways:
        gw.stop()


@pytest.fixture
def short_dir():
    """Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer."""
    path = tempfile.mkdtemp(prefix="gw", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def call(url: str, path: str, body=None, token: str | None = None, raw: bytes | None = None):
    """(status, JSON reply) of one HTTP request to the gateway's TCP server."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + path, data, headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def ask(url, token, content, **kw):
    return call(url, "/chat/completions", {"messages": [{"role": "user", "content": content}], **kw}, token)


class FakeSampler:
    """Stands in for ``Sampler``: echoes a fixed reply and records what it was asked."""

    def __init__(self, text="four", prompt_tokens=5, completion_tokens=None):
        self.text, self.prompt_tokens, self.completion_tokens = text, prompt_tokens, completion_tokens
        self.calls, self.batches = [], []

    def chat(self, messages, max_new_tokens, temperature, seed=None):
        self.calls.append({"messages": messages, "max_new_tokens": max_new_tokens,
                           "temperature": temperature})
        n = self.completion_tokens if self.completion_tokens is not None else len(self.text.split())
        return {"text": self.text, "prompt_tokens": self.prompt_tokens, "completion_tokens": n,
                "finished": True}

    def chat_batch(self, requests, seed=None):
        self.batches.append(len(requests))
        return [self.chat(**r) for r in requests]


# --- config --------------------------------------------------------------------------------------

def test_config_defaults_and_yaml(tmp_path):
    default = GatewayConfig()
    assert [(r.name, r.backend) for r in default.routes] == [("smollm2-135m-instruct", "sampler")]
    assert default.tcp_host == "127.0.0.1" and default.tcp_port == 0
    cfg = GatewayConfig.model_validate(yaml.safe_load("""
routes:
  - {name: gpt-4o-mini, backend: openai, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6}
  - {name: local, backend: sampler, model: smollm2-135m-instruct}
default_model: local
max_cost_usd: 2.5
"""))
    assert cfg.routes[0].api_key_env == "OPENAI_API_KEY" and cfg.max_cost_usd == 2.5


@pytest.mark.parametrize("raw, words", [
    ({"routes": [{"name": "a", "backend": "replay"}]}, "needs replies"),
    ({"routes": [{"name": "a", "backend": "sampler"}], "default_model": "b"}, "not a route"),
    ({"routes": [{"name": "a", "backend": "sampler"}] * 2}, "unique"),
    ({"routes": [{"name": "a", "backend": "sampler", "modle": "x"}]}, "modle"),
    ({"routes": [{"name": "a", "backend": "carrier-pigeon"}]}, "backend"),
])
def test_config_errors_name_the_problem(raw, words):
    with pytest.raises(ValidationError, match=words):
        GatewayConfig.model_validate(raw)


def test_apply_stop_cuts_at_the_earliest_stop_string():
    assert apply_stop("a b STOP c END", ["END", "STOP"]) == ("a b ", True)
    assert apply_stop("a b", ["zz"]) == ("a b", False)
    assert apply_stop("a b", None) == ("a b", False)


# --- replay backend, auth, errors ------------------------------------------------------------------

def test_replay_picks_the_first_matching_rule_with_uses_left(tmp_path, started):
    gw, addr = started(replay_cfg(tmp_path, [
        {"match": r"hello.*world", "reply": "first", "times": 1},
        {"match": "hello", "reply": "second reply", "times": None},
        {"match": "never", "reply": "unused", "times": 0},
        {"match": ".", "reply": "fallback"}]))
    token = gw.issue_token("run-1")
    replies = [ask(addr["url"], token, text)[1]["choices"][0]["message"]["content"]
               for text in ["hello\nbig world", "hello big world", "hello", "never mind"]]
    assert replies == ["first", "second reply", "second reply", "fallback"]
    status, reply = ask(addr["url"], token, "one two three")
    assert status == 200 and reply["model"] == "replay" and reply["object"] == "chat.completion"
    assert reply["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert reply["choices"][0]["finish_reason"] == "stop"


def test_replay_without_a_match_is_a_500_showing_the_request_tail(tmp_path, started):
    gw, addr = started(replay_cfg(tmp_path, [{"match": "^never$", "reply": "x"}]))
    status, reply = ask(addr["url"], gw.issue_token("r"), "start " + "x" * 400 + " the-tail-end")
    assert status == 500
    message = reply["error"]["message"]
    assert "the-tail-end" in message and "start" not in message and "no replay rule" in message


def test_stop_strings_truncate_the_reply(tmp_path, started):
    gw, addr = started(replay_cfg(tmp_path, [{"match": ".", "reply": "alpha beta STOP gamma END"}]))
    token = gw.issue_token("r")
    assert ask(addr["url"], token, "q", stop=["END", "STOP"])[1]["choices"][0]["message"]["content"] \
        == "alpha beta "
    assert ask(addr["url"], token, "q", stop="END")[1]["choices"][0]["message"]["content"] \
        == "alpha beta STOP gamma "
    assert ask(addr["url"], token, "q", stop=3)[0] == 400


def test_requests_need_an_issued_token(tmp_path, started):
    gw, addr = started(replay_cfg(tmp_path, [{"match": ".", "reply": "ok"}]))
    for token in (None, "made-up"):
        status, reply = ask(addr["url"], token, "hi")
        assert status == 401 and reply["error"]["type"] == "authentication_error"
        assert call(addr["url"], "/models", token=token)[0] == 401
    status, _ = ask(addr["url"], gw.issue_token("r"), "hi")
    assert status == 200


def test_unknown_model_is_a_404_listing_the_models_and_no_model_means_default(tmp_path, started):
    cfg = replay_cfg(tmp_path, [{"match": ".", "reply": "ok"}])
    cfg = GatewayConfig(routes=[*cfg.routes, ModelRoute(name="other", backend="sampler")],
                        default_model="replay")
    gw, addr = started(cfg, samplers={"other": FakeSampler("from sampler")})
    token = gw.issue_token("r")
    status, reply = ask(addr["url"], token, "hi", model="gpt-17")
    assert status == 404 and "'gpt-17'" in reply["error"]["message"]
    assert "replay" in reply["error"]["message"] and "other" in reply["error"]["message"]
    assert ask(addr["url"], token, "hi")[1]["model"] == "replay"
    assert ask(addr["url"], token, "hi", model="other")[1]["choices"][0]["message"]["content"] == "from sampler"
    status, models = call(addr["url"], "/models", token=token)
    assert status == 200 and [m["id"] for m in models["data"]] == ["replay", "other"]


@pytest.mark.parametrize("raw, words", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b"{}", "'messages'"),
    (b'{"messages": []}', "'messages'"),
    (b'{"messages": [{"content": "x"}]}', "messages[0]"),
    (b'{"messages": [{"role": "user", "content": 3}]}', "messages[0].content"),
    (b'{"messages": ["hi"]}', "messages[0]"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": -1}', "temperature"),
])
def test_malformed_requests_are_400s_that_say_why(tmp_path, started, raw, words):
    gw, addr = started(replay_cfg(tmp_path, [{"match": ".", "reply": "ok"}]))
    status, reply = call(addr["url"], "/chat/completions", token=gw.issue_token("r"), raw=raw)
    assert status == 400 and words in reply["error"]["message"]


def test_unknown_endpoint_is_a_404(tmp_path, started):
    gw, addr = started(replay_cfg(tmp_path, [{"match": ".", "reply": "ok"}]))
    status, reply = call(addr["url"], "/embeddings", {"input": "x"}, gw.issue_token("r"))
    assert status == 404 and "/v1/chat/completions" in reply["error"]["message"]


# --- accounting and budgets ------------------------------------------------------------------------

def test_token_budget_reserves_prompt_and_reply_and_answers_429_before_the_call(tmp_path, started):
    # a prompt of "x" is held as 1 + 8 + 64 = 73 tokens (an upper bound for any tokenizer), the
    # reply gets what the budget leaves after that; the charge is the real 4 + 3 = 7
    gw, addr = started(GatewayConfig(routes=[{"name": "m", "backend": "sampler"}], max_tokens=90),
                       samplers={"m": (fake := FakeSampler("a b c", prompt_tokens=4))})
    token = gw.issue_token("run-a")
    assert [ask(addr["url"], token, "x", max_tokens=100)[0] for _ in range(3)] == [200] * 3
    assert [c["max_new_tokens"] for c in fake.calls] == [17, 10, 3]     # 90-73, 83-73, 76-73
    status, reply = ask(addr["url"], token, "x")                         # 69 left < 73
    assert status == 429 and reply["error"]["type"] == "budget_exceeded"
    assert "max_tokens" in reply["error"]["message"] and "21" in reply["error"]["message"]
    assert len(fake.calls) == 3 and gw.usage("run-a")["prompt_tokens"] == 12
    assert gw.usage("run-a")["refused_tokens"] == 1      # how the DGM loop learns it is spent
    assert ask(addr["url"], gw.issue_token("run-b"), "x")[0] == 200        # budgets are per run


def test_cost_budget_and_usage_per_run_and_model(tmp_path, started):
    prompt = " ".join(["w"] * 1000)
    cfg = replay_cfg(tmp_path, [{"match": ".", "reply": " ".join(["r"] * 250)}], max_cost_usd=0.006,
                     route={"input_usd_per_mtok": 2.0, "output_usd_per_mtok": 8.0})
    gw, addr = started(cfg)
    token = gw.issue_token("run-a")
    # a request: 1000 * $2/Mtok = $0.002 for the prompt; its reply may take what is left
    assert ask(addr["url"], token, prompt)[0] == 200        # 250 * $8/Mtok: $0.004 in all
    status, reply = ask(addr["url"], token, prompt)          # $0.002 left: the prompt alone
    assert status == 429 and reply["error"]["type"] == "budget_exceeded"
    assert "max_cost_usd" in reply["error"]["message"] and "0.004" in reply["error"]["message"]
    assert ask(addr["url"], token, "w w")[0] == 200          # a small one still fits: its reply
    usage = gw.usage("run-a")                                # is held (and charged) to 249 tokens
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (2, 1002, 499)
    assert usage["cost_usd"] == pytest.approx(1002 * 2e-6 + 499 * 8e-6) and usage["cost_usd"] <= 0.006
    assert usage["models"]["replay"]["cost_usd"] == pytest.approx(usage["cost_usd"])
    status, own = call(addr["url"], "/usage", token=token)
    assert status == 200 and own["run"] == "run-a" and own["prompt_tokens"] == 1002
    assert set(gw.usage()) == {"run-a"}
    with pytest.raises(KeyError, match="run-z"):
        gw.usage("run-z")


# --- backends --------------------------------------------------------------------------------------

class FakeOpenAI(BaseHTTPRequestHandler):
    """An OpenAI-compatible upstream that records requests and can be told to fail."""
    seen: list = []
    fail: int | None = None

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if FakeOpenAI.fail:   # real upstreams sometimes quote the key they were given
            status, reply = FakeOpenAI.fail, {"error": {"message": f"Incorrect API key {SECRET}"}}
        else:
            status, reply = 200, {"choices": [{"message": {"role": "assistant", "content": "upstream says hi"}}],
                                  "usage": {"prompt_tokens": 11, "completion_tokens": 3}}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeOpenAI.seen, FakeOpenAI.fail = [], None
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_backend_sends_the_key_and_never_returns_it(upstream, started, monkeypatch):
    monkeypatch.setenv("FAKE_OPENAI_KEY", SECRET)
    cfg = GatewayConfig(routes=[{"name": "gpt", "backend": "openai", "model": "gpt-upstream-id",
                                 "base_url": upstream, "api_key_env": "FAKE_OPENAI_KEY",
                                 "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}])
    gw, addr = started(cfg)
    token = gw.issue_token("r")
    status, reply = ask(addr["url"], token, "hello", max_tokens=7, temperature=0.5, stop=["\n"])
    assert status == 200 and reply["choices"][0]["message"]["content"] == "upstream says hi"
    assert reply["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    sent = FakeOpenAI.seen[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == f"Bearer {SECRET}"
    assert sent["body"]["model"] == "gpt-upstream-id" and sent["body"]["max_tokens"] == 7
    assert sent["body"]["stop"] == ["\n"] and sent["body"]["temperature"] == 0.5
    assert gw.usage("r")["cost_usd"] == pytest.approx((11 * 1.0 + 3 * 2.0) / 1e6)

    FakeOpenAI.fail = 401
    status, error = ask(addr["url"], token, "hello")
    assert status == 502 and "401" in error["error"]["message"] and "[redacted]" in error["error"]["message"]
    responses = [reply, error, call(addr["url"], "/models", token=token)[1],
                 call(addr["url"], "/usage", token=token)[1], gw.usage(), gw.start()]
    assert all(SECRET not in json.dumps(r) for r in responses)
    assert SECRET not in repr(cfg) and SECRET not in cfg.model_dump_json()


def test_openai_backend_without_usage_estimates_tokens(upstream, started, monkeypatch):
    monkeypatch.setattr(FakeOpenAI, "do_POST", _reply_without_usage)
    cfg = GatewayConfig(routes=[{"name": "gpt", "backend": "openai", "base_url": upstream,
                                 "api_key_env": None}])
    gw, addr = started(cfg)
    status, reply = ask(addr["url"], gw.issue_token("r"), "x" * 40)
    assert status == 200 and reply["usage"]["prompt_tokens"] == 10 and reply["usage"]["completion_tokens"] == 2


def _reply_without_usage(handler):
    handler.rfile.read(int(handler.headers["Content-Length"]))
    data = json.dumps({"choices": [{"message": {"content": "12345678"}}]}).encode()
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def test_openai_route_with_the_key_variable_unset_names_route_and_variable(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    cfg = GatewayConfig(routes=[{"name": "gpt", "backend": "openai", "api_key_env": "NO_SUCH_KEY_VAR"}])
    with pytest.raises(ValueError, match="'gpt'.*NO_SUCH_KEY_VAR"):
        Gateway(cfg, None)


def test_unreachable_upstream_is_a_502(started, monkeypatch):
    cfg = GatewayConfig(routes=[{"name": "gpt", "backend": "openai", "api_key_env": None,
                                 "base_url": "http://127.0.0.1:9/v1"}])
    gw, addr = started(cfg)
    status, reply = ask(addr["url"], gw.issue_token("r"), "hi")
    assert status == 502 and "unreachable" in reply["error"]["message"]


def test_sampler_route_passes_the_request_through(started):
    fake = FakeSampler("one two three", prompt_tokens=9, completion_tokens=4)
    gw, addr = started(GatewayConfig(routes=[{"name": "m", "backend": "sampler", "max_new_tokens_cap": 4}]),
                       samplers={"m": fake})
    status, reply = ask(addr["url"], gw.issue_token("r"), "hi", max_tokens=100, temperature=0)
    assert status == 200 and reply["choices"][0]["finish_reason"] == "length"   # hit the cap of 4
    assert fake.calls == [{"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 4,
                           "temperature": 0.0}]
    with pytest.raises(ValueError, match="not sampler routes"):
        Gateway(GatewayConfig(routes=[{"name": "m", "backend": "sampler"}]), None, {"x": fake})


def test_real_sampler_chat_is_greedy_at_temperature_zero(tiny_lm, started):
    from actors.sampler import Sampler, SamplerSettings
    sampler = Sampler(SamplerSettings(tiny_lm, threads=1))
    messages = [{"role": "user", "content": "what is one plus two ?"}]
    first = sampler.chat(messages, max_new_tokens=6, temperature=0.0, seed=1)
    assert first == sampler.chat(messages, max_new_tokens=6, temperature=0.0, seed=2)
    assert first["prompt_tokens"] == len(sampler.encode(messages))
    assert 1 <= first["completion_tokens"] <= 6 and isinstance(first["finished"], bool)
    gw, addr = started(GatewayConfig(routes=[{"name": "tiny", "backend": "sampler"}]),
                       samplers={"tiny": sampler})
    status, reply = ask(addr["url"], gw.issue_token("r"), messages[0]["content"], max_tokens=6, temperature=0)
    assert status == 200 and reply["choices"][0]["message"]["content"] == first["text"]


# --- Unix socket and the sandbox client --------------------------------------------------------------

def test_unix_socket_end_to_end_through_the_client(tmp_path, short_dir, started, monkeypatch):
    sock = os.path.join(short_dir, "gateway.sock")
    Path(sock).touch()
    with pytest.raises(ValueError, match="not a socket"):
        Gateway(replay_cfg(tmp_path, [{"match": ".", "reply": "x"}]), sock).start()
    os.unlink(sock)
    cfg = replay_cfg(tmp_path, [{"match": "user: ping", "reply": "pong STOP rest"}], max_tokens=20)
    gw, addr = started(cfg, sock)
    assert addr["socket"] == sock and stat.S_IMODE(os.stat(sock).st_mode) == 0o666
    client = load_client()
    monkeypatch.setenv("EVORAY_GATEWAY", f"unix://{sock}")
    monkeypatch.setenv("EVORAY_GATEWAY_TOKEN", gw.issue_token("agent-7"))
    assert client.chat("ping", stop=["STOP"]) == "pong "
    assert client.chat([{"role": "user", "content": "ping"}], model="replay") == "pong STOP rest"
    assert client.usage()["requests"] == 2 and gw.usage("agent-7")["requests"] == 2
    with pytest.raises(client.GatewayError) as err:
        client.chat("pong")
    assert err.value.status == 500 and "no replay rule" in err.value.message
    with pytest.raises(client.GatewayError) as err:
        client.chat("ping " * 30)   # 2 x 4 tokens used, then 31 + 3: over the budget of 20
        client.chat("ping")
    assert err.value.status == 429 and "max_tokens" in err.value.message
    monkeypatch.setenv("EVORAY_GATEWAY_TOKEN", "forged")
    with pytest.raises(client.GatewayError) as err:
        client.chat("ping")
    assert err.value.status == 401


def test_client_over_tcp_and_a_stale_socket_is_replaced(tmp_path, short_dir, started, monkeypatch):
    import socket
    sock = os.path.join(short_dir, "gateway.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock)
    stale.close()   # leaves the socket file behind, as a crashed gateway would
    gw, addr = started(replay_cfg(tmp_path, [{"match": ".", "reply": "hi there"}]), sock)
    client = load_client()
    monkeypatch.setenv("EVORAY_GATEWAY", addr["url"])
    monkeypatch.setenv("EVORAY_GATEWAY_TOKEN", gw.issue_token("r"))
    assert client.chat("hello") == "hi there"
    monkeypatch.setenv("EVORAY_GATEWAY", f"unix://{sock}")
    assert client.chat("hello") == "hi there"
    gw.stop()
    assert not os.path.exists(sock)
    with pytest.raises(client.GatewayError) as err:
        client.chat("hello")
    assert err.value.status == 0 and "cannot reach" in err.value.message


@pytest.mark.parametrize("content, words", [
    (None, "does not exist"),
    ("match: x\nreply: y\n", "expected a list"),
    ("- {match: '(', reply: y}\n", "invalid replay rule"),
    ("- {match: x, reply: y, tims: 2}\n", "tims"),
])
def test_bad_replies_files_are_named(tmp_path, content, words):
    path = tmp_path / "replies.yaml"
    if content is not None:
        path.write_text(content)
    cfg = GatewayConfig(routes=[{"name": "replay", "backend": "replay", "replies": str(path)}])
    with pytest.raises(ValueError, match=words):
        Gateway(cfg)


def test_concurrent_sampler_requests_are_batched():
    """Requests that arrive together reach the sampler as one batch, each with its own reply."""
    import threading
    slow = FakeSampler()
    orig = slow.chat_batch

    def chat_batch(requests, seed=None):
        import time
        time.sleep(0.2)   # the first call is busy while the others queue up
        return orig(requests, seed)
    slow.chat_batch = chat_batch
    cfg = GatewayConfig(routes=[ModelRoute(name="m", backend="sampler", max_batch=8,
                                           batch_window_s=0.05)])
    backend = BACKENDS["sampler"](cfg.routes[0], cfg, slow)
    out = []
    threads = [threading.Thread(target=lambda i=i: out.append(
        backend.complete([{"role": "user", "content": f"q{i}"}], 4 + i, 0.5, None)))
        for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 5 and sum(slow.batches) == 5 and max(slow.batches) >= 2
    assert sorted(c["max_new_tokens"] for c in slow.calls) == [4, 5, 6, 7, 8]


def test_optional_route_without_key_is_left_out(monkeypatch):
    from jobs.dgm.gateway import active_routes
    cfg = GatewayConfig(routes=[
        ModelRoute(name="ext", backend="openai", api_key_env="EVORAY_TEST_KEY", optional=True),
        ModelRoute(name="local", backend="sampler")], default_model="ext")
    monkeypatch.delenv("EVORAY_TEST_KEY", raising=False)
    without = active_routes(cfg, {})
    assert [r.name for r in without.routes] == ["local"] and without.default_model is None
    with_key = active_routes(cfg, {"EVORAY_TEST_KEY": "sk-x"})
    assert [r.name for r in with_key.routes] == ["ext", "local"] and with_key.default_model == "ext"
    with pytest.raises(ValueError, match="no gateway route is usable"):
        active_routes(GatewayConfig(routes=[cfg.routes[0]]), {})


def test_restored_usage_counts_against_the_budget():
    gw = Gateway(GatewayConfig(routes=[ModelRoute(name="m", backend="sampler")], max_tokens=100),
                 None, {"m": FakeSampler()})
    token = gw.issue_token("run")
    gw.restore_usage("run", {"prompt_tokens": 100, "cost_usd": 0.5})
    assert gw.usage("run")["prompt_tokens"] == 100 and gw.usage("run")["cost_usd"] == 0.5
    status, reply = gw.handle("POST", "/v1/chat/completions", f"Bearer {token}",
                              json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode())
    assert status == 429 and reply["error"]["type"] == "budget_exceeded"


def test_relay_carries_requests_from_a_unix_socket_to_the_tcp_gateway(tmp_path, monkeypatch):
    """What a sandbox on any node does: speak HTTP to the relay's Unix socket."""
    from jobs.dgm.gateway_relay import SocketRelay
    from urllib.parse import urlsplit
    gw = Gateway(GatewayConfig(routes=[ModelRoute(name="m", backend="sampler")]), None,
                 {"m": FakeSampler(text="via relay")})
    url = urlsplit(gw.start()["url"])
    relay = SocketRelay((url.hostname, url.port))
    try:
        assert oct(os.stat(relay.path).st_mode & 0o777) == "0o666"
        monkeypatch.setenv("EVORAY_GATEWAY", f"unix://{relay.path}")
        monkeypatch.setenv("EVORAY_GATEWAY_TOKEN", gw.issue_token("run"))
        client = load_client()
        assert [client.chat("hi") for _ in range(3)] == ["via relay"] * 3
        monkeypatch.setenv("EVORAY_GATEWAY_TOKEN", "forged")
        with pytest.raises(client.GatewayError) as e:
            client.chat("hi")
        assert e.value.status == 401   # the relay adds no authority of its own
    finally:
        relay.close()
        gw.stop()
