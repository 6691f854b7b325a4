"""Client for the evoray LLM gateway; Python standard library only (the sandbox has nothing else).

The sandbox has no network: the gateway is a Unix socket mounted at /run/evoray/gateway.sock
(EVORAY_GATEWAY=unix:///run/evoray/gateway.sock), or http://host:port/v1 outside a sandbox.
EVORAY_GATEWAY_TOKEN charges calls to this run; a spent budget answers 429.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
from urllib.parse import urlsplit

DEFAULT_GATEWAY = "unix:///run/evoray/gateway.sock"


class GatewayError(RuntimeError):
    """A non-200 answer (status 429: budget spent); status 0 means the gateway was unreachable."""

    def __init__(self, status: int, message: str):
        super().__init__(f"LLM gateway error {status}: {message}")
        self.status, self.message = status, message


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def _request(method: str, endpoint: str, body: dict | None = None, timeout: float = 600) -> dict:
    url = os.environ.get("EVORAY_GATEWAY", DEFAULT_GATEWAY)
    parts = urlsplit(url)
    if parts.scheme == "unix":
        conn, prefix = UnixHTTPConnection(parts.path, timeout), "/v1"
    else:
        conn, prefix = http.client.HTTPConnection(parts.netloc, timeout=timeout), parts.path.rstrip("/")
    headers = {"Content-Type": "application/json"}
    if os.environ.get("EVORAY_GATEWAY_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["EVORAY_GATEWAY_TOKEN"]
    try:
        conn.request(method, prefix + endpoint, json.dumps(body) if body else None, headers)
        resp = conn.getresponse()
        status, raw = resp.status, resp.read()
    except OSError as e:
        raise GatewayError(0, f"cannot reach the gateway at {url}: {e}") from None
    finally:
        conn.close()
    try:
        reply = json.loads(raw)
    except ValueError:
        raise GatewayError(status, raw.decode("utf-8", "replace")[:500]) from None
    if status != 200:
        raise GatewayError(status, str((reply.get("error") or {}).get("message", reply)))
    return reply


def chat(messages, model: str | None = None, max_tokens: int = 512, temperature: float = 0.0,
         stop: list[str] | None = None) -> str:
    """The assistant's reply to ``messages`` (a list of {role, content}, or one user string)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, "stop": stop}
    if model:
        body["model"] = model
    return _request("POST", "/chat/completions", body)["choices"][0]["message"]["content"]


def usage() -> dict:
    """This run's usage so far: requests, prompt_tokens, completion_tokens, cost_usd."""
    return _request("GET", "/usage")
