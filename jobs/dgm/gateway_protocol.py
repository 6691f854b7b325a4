"""The gateway's wire rules: errors, request validation, prompt bounds and key redaction.

Everything a caller sends is checked here field by field (a malformed one is a 400 naming it,
never a 500), and everything sent back can pass through ``redact`` first.
"""
from __future__ import annotations

import json


class GatewayError(Exception):
    """A failure with the HTTP status and OpenAI-style error type that the client should see."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def bad_request(message: str) -> GatewayError:
    return GatewayError(400, "invalid_request_error", message)


def over_budget(message: str) -> GatewayError:
    return GatewayError(429, "budget_exceeded", message)


def error_message(raw: str) -> str:
    """The upstream's error message, cut short; ``raw`` must already be redacted."""
    try:
        return str(json.loads(raw)["error"]["message"])[:500]
    except (ValueError, KeyError, TypeError):
        return raw[:500]


def fragment_length(secret: str) -> int:
    """How long a piece of ``secret`` must be to count as leaking it: 8 characters (half of a
    short secret)."""
    return max(4, min(8, len(secret) // 2))


def redact(text: str, secrets_: list[str]) -> str:
    """``text`` with every piece of each secret at least ``fragment_length`` long replaced: every
    such piece contains one of the secret's windows of that length, so finding the windows and
    merging their spans covers them all."""
    spans = []
    for secret in secrets_:
        n = fragment_length(secret)
        for window in {secret[i:i + n] for i in range(len(secret) - n + 1)}:
            at = text.find(window)
            while at >= 0:
                spans.append((at, at + n))
                at = text.find(window, at + 1)
    if not spans:
        return text
    spans.sort()
    out, pos, merged = [], 0, [list(spans[0])]
    for start, end in spans[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in merged:
        out += [text[pos:start], "[redacted]"]
        pos = end
    return "".join(out + [text[pos:]])


def apply_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """Cut at the first stop string, so that backends need not honour ``stop`` themselves."""
    cuts = [i for i in (text.find(s) for s in stop or [] if s) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


def _number(request: dict, key: str, default: float, low: float) -> float:
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < float("inf"):
        raise bad_request(f"'{key}' must be a finite number >= {low:g}, not {value!r}"[:200])
    return float(value)


def _content(m, i: int) -> str:
    content = m.get("content") if isinstance(m, dict) else None
    if isinstance(content, list):   # OpenAI content parts: keep the text ones
        if not all(isinstance(p, dict) and isinstance(p.get("text", ""), str) for p in content):
            raise bad_request(f"messages[{i}].content parts must be objects with a string 'text'")
        content = "".join(p.get("text", "") for p in content)
    if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(content, str):
        raise bad_request(f"messages[{i}] must be an object with a string 'role' and messages[{i}]"
                          ".content a string")
    return content


def parse_request(request: dict, cap: int) -> tuple[list[dict], int, float, list[str] | None]:
    """(messages, max_tokens, temperature, stop) of a chat request, or a 400 naming the field."""
    msgs, stop = request.get("messages"), request.get("stop")
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects")
    messages = [{"role": m["role"], "content": _content(m, i)} for i, m in enumerate(msgs)
                if _content(m, i) is not None]
    max_tokens = request.get("max_tokens", request.get("max_completion_tokens"))
    max_tokens = cap if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise bad_request(f"'max_tokens' must be a positive integer, not {max_tokens!r}"[:200])
    temperature = _number(request, "temperature", 1.0, 0.0)
    _number(request, "top_p", 1.0, 0.0)
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise bad_request("'stop' must be a string or a list of strings")
    if request.get("stream") not in (None, False):
        raise bad_request("'stream' is not supported: leave it out or false")
    if request.get("n", 1) != 1 or isinstance(request.get("n"), bool):
        raise bad_request("'n' must be 1: one choice per request")
    return messages, min(max_tokens, cap), temperature, stop


def prompt_bound(messages: list[dict]) -> int:
    """At least the prompt's tokens under any tokenizer we route to: a token covers at least one
    UTF-8 byte, and chat templates add a few tokens per message (and a default system prompt)."""
    return sum(len(m["content"].encode()) + 8 for m in messages) + 64
