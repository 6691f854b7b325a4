"""LLM gateway: the one door from sandboxed agents (and from humans) to language models.

The DGM's coding agents are model-written code running in sandboxes without a network. They reach
models only through this server, over a Unix socket whose directory is mounted into the sandbox,
so API keys never enter a sandbox, every call is charged to the run that made it, and a run that
has spent its token or dollar budget gets HTTP 429 instead of spending on. It speaks the OpenAI
chat-completions protocol, so the same server also serves people and tools on TCP.
"""
from __future__ import annotations

import copy
import queue
from concurrent.futures import Future
import json
import logging
import os
import re
import secrets
import socket
import socketserver
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional, Protocol

import yaml
from pydantic import Field, ValidationError

from jobs.dgm.config import GatewayConfig, ModelRoute
from jobs.dgm.gateway_protocol import (GatewayError, apply_stop, bad_request, error_message,
                                       over_budget, parse_request, prompt_bound, redact)
from services.config import EMBEDDED_MODEL, Strict

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 16 << 20
ENDPOINTS = {("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/v1/usage")}


class Backend(Protocol):
    def complete(self, messages: list[dict], max_tokens: int, temperature: float,
                 stop: list[str] | None) -> tuple[str, int, int]: ...


class SamplerBackend:
    """A local model through ``Sampler.chat_batch``: a Ray actor handle or an in-process object.

    Concurrent requests are gathered into one batched generation (up to ``route.max_batch``,
    waiting at most ``route.batch_window_s`` for company): on a CPU, one sequence and a batch of
    eight decode at nearly the same speed.
    """

    def __init__(self, route: ModelRoute, cfg: GatewayConfig, sampler: object | None):
        self.route, self.sampler, self.timeout_s = route, sampler, cfg.request_timeout_s
        self.pending: queue.Queue = queue.Queue()
        threading.Thread(target=self._dispatch, daemon=True).start()

    def complete(self, messages, max_tokens, temperature, stop):
        done: Future = Future()
        self.pending.put(({"messages": messages, "max_new_tokens": max_tokens,
                           "temperature": temperature}, done))
        out = done.result(timeout=self.timeout_s)
        return out["text"], int(out["prompt_tokens"]), int(out["completion_tokens"])

    def _gather(self) -> list:
        batch = [self.pending.get()]
        deadline = time.monotonic() + self.route.batch_window_s
        while len(batch) < self.route.max_batch:
            try:
                batch.append(self.pending.get(timeout=max(deadline - time.monotonic(), 0)))
            except queue.Empty:
                break
        return batch

    def _dispatch(self) -> None:
        while True:
            batch = self._gather()
            try:
                replies = self._generate([req for req, _ in batch])
                for (_, done), reply in zip(batch, replies):
                    done.set_result(reply)
            except Exception as e:   # every waiting request hears about it
                for _, done in batch:
                    if not done.done():
                        done.set_exception(e)

    def _generate(self, requests: list[dict]) -> list[dict]:
        if self.sampler is None:   # loaded on first use, so that start() stays fast
            from actors.sampler import Sampler, SamplerSettings
            self.sampler = Sampler(SamplerSettings(self.route.model or EMBEDDED_MODEL))
        if hasattr(self.sampler.chat_batch, "remote"):
            import ray
            return ray.get(self.sampler.chat_batch.remote(requests), timeout=self.timeout_s)
        return self.sampler.chat_batch(requests)


class OpenAIBackend:
    """An OpenAI-compatible upstream. The key is read from the gateway's own environment only."""

    def __init__(self, route: ModelRoute, cfg: GatewayConfig, sampler: object | None = None):
        self.url = route.base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout_s = route.model or route.name, cfg.request_timeout_s
        self.key = os.environ.get(route.api_key_env) if route.api_key_env else None
        if route.api_key_env and not self.key:
            raise ValueError(f"route {route.name!r}: environment variable {route.api_key_env} "
                             f"(the API key for {route.base_url}) is not set in the gateway's "
                             "environment; set it, or api_key_env: null for a keyless upstream")

    def complete(self, messages, max_tokens, temperature, stop):
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": temperature, **({"stop": stop} if stop else {})}
        headers = {"Content-Type": "application/json",
                   **({"Authorization": f"Bearer {self.key}"} if self.key else {})}
        req = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                reply = json.loads(resp.read())
            text = reply["choices"][0]["message"]["content"] or ""
        except urllib.error.HTTPError as e:
            raw = redact(e.read().decode("utf-8", "replace"), [self.key] if self.key else [])
            raise GatewayError(502, "upstream_error", f"upstream {self.url} answered HTTP {e.code}: "
                               f"{error_message(raw)}") from None
        except OSError as e:   # URLError, refused connections and timeouts
            raise GatewayError(502, "upstream_error",
                               f"upstream {self.url} unreachable: {getattr(e, 'reason', e)}") from None
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise GatewayError(502, "upstream_error",
                               f"upstream {self.url} sent no chat completion ({e!r})") from None
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        guess = sum(len(m["content"]) for m in messages) // 4   # ~4 characters a token
        counts = (usage.get("prompt_tokens", guess), usage.get("completion_tokens", len(text) // 4))
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
            raise GatewayError(502, "upstream_error", f"upstream {self.url} reported token counts "
                               f"that are not counts: {str(counts)[:100]}")
        return (str(text), *counts)


class ReplayRule(Strict):
    match: str
    reply: str
    times: Optional[int] = Field(None, ge=0)    # None: unlimited


class ReplayBackend:
    """Recorded replies picked by regex, so agent runs in tests are deterministic and model-free."""

    def __init__(self, route: ModelRoute, cfg: GatewayConfig, sampler: object | None = None):
        path, self.name = Path(route.replies), route.name
        if not path.is_file():
            raise ValueError(f"route {route.name!r}: replies file {path} does not exist")
        raw = yaml.safe_load(path.read_text())   # YAML reads JSON too
        if not isinstance(raw, list):
            raise ValueError(f"{path}: expected a list of {{match, reply, times}} rules")
        try:
            self.rules = [ReplayRule.model_validate(r) for r in raw]
            self.patterns = [re.compile(r.match, re.DOTALL) for r in self.rules]
        except (ValidationError, re.error) as e:
            raise ValueError(f"{path}: invalid replay rule: {e}") from None
        self.left, self.lock = [r.times for r in self.rules], threading.Lock()

    def prompt_bound(self, messages) -> int:
        return sum(len(m["content"].split()) for m in messages)   # exactly what complete() charges

    def complete(self, messages, max_tokens, temperature, stop):
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        with self.lock:
            hit = next((i for i, p in enumerate(self.patterns) if self.left[i] != 0 and p.search(text)),
                       None)
            if hit is None:
                raise GatewayError(500, "replay_no_match", f"route {self.name!r}: no replay rule with "
                                   f"uses left matches the request, which ends: {text[-300:]!r}")
            if self.left[hit] is not None:
                self.left[hit] -= 1
        reply = self.rules[hit].reply
        return reply, sum(len(m["content"].split()) for m in messages), len(reply.split())


BACKENDS = {"sampler": SamplerBackend, "openai": OpenAIBackend, "replay": ReplayBackend}


def empty_usage() -> dict:
    return {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}


def new_run() -> dict:
    # refused_*: requests turned away because they did not fit in what a budget had left, which
    # is how a run learns its budget is as good as spent (reservations keep spend below it)
    return {**empty_usage(), "models": {}, "refused_tokens": 0, "refused_cost": 0}


def active_routes(cfg: GatewayConfig, environ) -> GatewayConfig:
    """Drop optional routes whose API key is not set, so one config serves with a key (the external
    model first) and without one (the in-cluster model)."""
    keep = [r for r in cfg.routes
            if not (r.optional and r.backend == "openai" and r.api_key_env
                    and not environ.get(r.api_key_env))]
    if not keep:
        raise ValueError("no gateway route is usable: every route is optional and lacks its key")
    default = cfg.default_model if cfg.default_model in {r.name for r in keep} else None
    return cfg.model_copy(update={"routes": keep, "default_model": default})


class Gateway:
    """Routes OpenAI-style requests to backends and charges them to runs; usable as a Ray actor."""

    def __init__(self, cfg: GatewayConfig, socket_path: str | None = None,
                 samplers: dict[str, object] | None = None):
        samplers = samplers or {}
        cfg = active_routes(cfg, os.environ)
        if extra := set(samplers) - {r.name for r in cfg.routes if r.backend == "sampler"}:
            raise ValueError(f"samplers given for {sorted(extra)}, which are not sampler routes")
        self.cfg, self.socket_path = cfg, socket_path
        self.routes = {r.name: r for r in cfg.routes}
        self.backends = {r.name: BACKENDS[r.backend](r, cfg, samplers.get(r.name)) for r in cfg.routes}
        self.redacted = [b.key for b in self.backends.values() if getattr(b, "key", None)]
        self.tokens: dict[str, str] = {}
        self.runs: dict[str, dict] = {}
        self.held: dict[str, list] = {}   # run → [tokens, usd] reserved by requests in flight
        self.lock = threading.Lock()
        self.servers: list[ThreadingHTTPServer] = []
        self.address: dict = {}

    def start(self) -> dict:
        """Serve on TCP and (when a socket path was given) on the Unix socket, in daemon threads."""
        if not self.servers:
            self.servers = [GatewayHTTPServer((self.cfg.tcp_host, self.cfg.tcp_port), Handler)]
            if self.socket_path:
                self.servers.append(unix_server(self.socket_path))
            for server in self.servers:
                server.gateway = self
                threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
            host, port = self.servers[0].server_address[:2]
            if host in ("0.0.0.0", ""):   # bound to every interface: hand out one others can reach
                host = socket.gethostbyname(socket.gethostname())
            self.address = {"url": f"http://{host}:{port}/v1", "socket": self.socket_path}
        return self.address

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
        if self.servers and self.socket_path and os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self.servers = []

    def issue_token(self, run: str) -> str:
        """A bearer token that charges requests to ``run``; a run may hold several."""
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = run
            self.runs.setdefault(run, new_run())
        return token

    def restore_usage(self, run: str, usage: dict) -> None:
        """Carry a resumed run's earlier usage over, so its budget spans the whole run."""
        with self.lock:
            total = self.runs.setdefault(run, new_run())
            for key in ("requests", "prompt_tokens", "completion_tokens", "cost_usd"):
                total[key] += usage.get(key, 0)

    def usage(self, run: str | None = None) -> dict:
        """One run's usage (with a per-model breakdown), or every run's keyed by run id."""
        with self.lock:
            if run is not None and run not in self.runs:
                raise KeyError(f"no tokens were issued for run {run!r}; runs: {sorted(self.runs)}")
            return copy.deepcopy(self.runs[run] if run is not None else self.runs)

    def handle(self, method: str, path: str, authorization: str | None, body: bytes) -> tuple[int, dict]:
        """One HTTP request, as (status, JSON reply); errors become OpenAI-style error objects."""
        try:
            path = path.split("?")[0].rstrip("/")
            if (method, path) not in ENDPOINTS:
                raise GatewayError(404, "not_found", f"no endpoint {method} {path}; endpoints: "
                                   + ", ".join(" ".join(e) for e in sorted(ENDPOINTS)))
            run = self.authenticate(authorization)
            if path == "/v1/models":
                return 200, {"object": "list", "data": [{"id": n, "object": "model", "created": 0,
                                                         "owned_by": "evoray"} for n in self.routes]}
            if path == "/v1/usage":
                return 200, {"run": run, **self.usage(run)}
            try:
                request = json.loads(body)
            except (ValueError, RecursionError) as e:   # RecursionError: absurdly deep nesting
                raise bad_request(f"request body is not valid JSON: {str(e)[:200]}") from None
            if not isinstance(request, dict):
                raise bad_request("request body must be a JSON object")
            return 200, self.chat(run, request)
        except GatewayError as e:
            return e.status, {"error": {"type": e.kind, "message": e.message}}
        except TimeoutError as e:
            return 504, {"error": {"type": "timeout", "message": f"backend timed out: {e}"}}
        except Exception as e:   # a backend bug must reach the caller, not kill the server thread
            log.exception("gateway request failed")
            return 500, {"error": {"type": "internal_error", "message": f"{type(e).__name__}: {e}"}}

    def authenticate(self, authorization: str | None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        with self.lock:
            run = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if run is None:
            raise GatewayError(401, "authentication_error", "missing or unknown bearer token: send "
                               "'Authorization: Bearer TOKEN' with a token from Gateway.issue_token "
                               "(in the sandbox it is in EVORAY_GATEWAY_TOKEN)")
        return run

    def chat(self, run: str, request: dict) -> dict:
        name = request.get("model")
        if name is not None and not isinstance(name, str):
            raise bad_request(f"'model' must be a string, not {type(name).__name__}")
        name = name or self.cfg.default_model or self.cfg.routes[0].name
        if name not in self.routes:
            raise GatewayError(404, "model_not_found",
                               f"model {name[:100]!r} is not served here; models: {sorted(self.routes)}")
        route, backend = self.routes[name], self.backends[name]
        messages, max_tokens, temperature, stop = parse_request(request, route.max_new_tokens_cap)
        bound = getattr(backend, "prompt_bound", prompt_bound)(messages)
        max_tokens, hold = self.reserve(run, route, bound, max_tokens)
        try:
            text, prompt_tokens, completion_tokens = backend.complete(
                messages, max_tokens, temperature, stop)
        except BaseException:
            self.release(run, hold)
            raise
        if prompt_tokens > bound or completion_tokens > max_tokens:
            log.warning("route %s reported %d + %d tokens, over the %d + %d reserved; charging the "
                        "reservation", name, prompt_tokens, completion_tokens, bound, max_tokens)
            prompt_tokens, completion_tokens = min(prompt_tokens, bound), min(completion_tokens, max_tokens)
        prompt_tokens, completion_tokens = max(prompt_tokens, 0), max(completion_tokens, 0)   # no refunds
        text, stopped = apply_stop(text, stop)
        self.charge(run, route, prompt_tokens, completion_tokens, hold)
        return {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion",
                "created": int(time.time()), "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if completion_tokens >= max_tokens
                             and not stopped else "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def reserve(self, run: str, route: ModelRoute, prompt: int, max_tokens: int) -> tuple[int, tuple]:
        """Hold the most this request can cost (``prompt`` tokens, an upper bound, plus the reply's
        ``max_tokens``, lowered to what the budgets leave), or refuse it with 429 before any work.
        Spent plus held never exceeds a budget, however many requests run at once."""
        cfg = self.cfg
        with self.lock:
            u, held = self.runs[run], self.held.setdefault(run, [0, 0.0])
            used, cost = u["prompt_tokens"] + u["completion_tokens"], u["cost_usd"]
            if cfg.max_tokens is not None:
                left = cfg.max_tokens - used - held[0]
                if prompt >= left:
                    u["refused_tokens"] += 1
                    raise over_budget(f"run {run!r} has used {used} tokens and holds {held[0]} for "
                                      f"requests in flight; this prompt needs up to {prompt} and "
                                      f"more for the reply: its max_tokens budget is {cfg.max_tokens}")
                max_tokens = min(max_tokens, left - prompt)
            usd_in, usd_out = route.input_usd_per_mtok / 1e6, route.output_usd_per_mtok / 1e6
            if cfg.max_cost_usd is not None:
                left_usd = cfg.max_cost_usd - cost - held[1] - prompt * usd_in
                if usd_out > 0:
                    max_tokens = min(max_tokens, int(left_usd / usd_out))
                if left_usd <= 0 or max_tokens < 1:
                    u["refused_cost"] += 1
                    raise over_budget(f"run {run!r} has spent ${cost:.6f} and holds ${held[1]:.6f} "
                                      f"for requests in flight; this prompt needs more than its "
                                      f"max_cost_usd budget of ${cfg.max_cost_usd:.6f} leaves")
            hold = (prompt + max_tokens, prompt * usd_in + max_tokens * usd_out)
            held[0] += hold[0]
            held[1] += hold[1]
        return max_tokens, hold

    def release(self, run: str, hold: tuple) -> None:
        with self.lock:
            held = self.held[run]
            held[0] -= hold[0]
            held[1] -= hold[1]

    def charge(self, run: str, route: ModelRoute, prompt_tokens: int, completion_tokens: int,
               hold: tuple) -> None:
        """Settle a request: its hold becomes its real usage in one step, so no other request can
        reserve in between against a total that counts neither."""
        cost = (prompt_tokens * route.input_usd_per_mtok + completion_tokens * route.output_usd_per_mtok) / 1e6
        with self.lock:
            held = self.held[run]
            held[0] -= hold[0]
            held[1] -= hold[1]
            total = self.runs[run]
            for u in (total, total["models"].setdefault(route.name, empty_usage())):
                u["requests"] += 1
                u["prompt_tokens"] += prompt_tokens
                u["completion_tokens"] += completion_tokens
                u["cost_usd"] += cost

    def redact(self, text: str) -> str:
        return redact(text, self.redacted)   # an upstream's error message could quote the key


class Handler(BaseHTTPRequestHandler):
    server_version = "evoray-gateway"
    timeout = 60   # a client that stalls mid-request must not hold a thread forever

    def do_POST(self) -> None:
        gateway: Gateway = self.server.gateway
        raw_length = (self.headers.get("Content-Length") or "0").strip()
        length = int(raw_length) if raw_length.isascii() and raw_length.isdigit() else -1
        if length < 0:
            status, obj = 400, {"error": {"type": "invalid_request_error",
                                          "message": "Content-Length must be a non-negative integer"}}
            self.close_connection = True   # the body's end is unknown
        elif length > MAX_BODY_BYTES:
            status, obj = 413, {"error": {"type": "invalid_request_error",
                                          "message": f"body of {length} bytes exceeds {MAX_BODY_BYTES}"}}
            self.close_connection = True
        else:
            body = self.rfile.read(length) if length > 0 else b""
            status, obj = gateway.handle(self.command, self.path, self.headers.get("Authorization"), body)
        data = gateway.redact(json.dumps(obj)).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # the caller is gone (a sandboxed agent killed at its time limit): the usage still counts
            log.debug("gateway: client left before its reply")

    do_GET = do_POST

    def log_message(self, format: str, *args) -> None:
        # the default writes client_address[0] to stderr, which a Unix socket peer does not have
        log.debug("gateway: " + format, *args)


class GatewayHTTPServer(ThreadingHTTPServer):
    request_queue_size = 128   # the default 5 resets a burst of concurrent agents' connections


class UnixHTTPServer(GatewayHTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        # HTTPServer.server_bind wants (host, port) to resolve a host name; a socket path has neither
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", 0


def unix_server(path: str) -> UnixHTTPServer:
    if len(os.fsencode(path)) > 107:
        raise ValueError(f"socket path {path} is longer than the 107 bytes a Unix socket allows")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path):
        if not Path(path).is_socket():
            raise ValueError(f"socket path {path} exists and is not a socket; not removing it")
        os.unlink(path)   # stale, from a gateway that did not stop cleanly
    server = UnixHTTPServer(path, Handler)
    os.chmod(path, 0o666)   # the sandbox runs as another uid
    return server
