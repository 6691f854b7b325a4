"""The layout's rules, read from the code's own imports (those inside functions count): floors
point one way (jobs → services → actors), no import circle among the project's modules, and no
file of the repository cites documents outside it."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FLOORS = {"actors": 1, "services": 2, "jobs": 3}


def modules() -> dict[str, Path]:
    out = {}
    for top in FLOORS:
        for path in (REPO / top).rglob("*.py"):
            if "examples" in path.relative_to(REPO).parts or "seed_agent" in path.parts:
                continue     # code the loops operate on (DGM's agent, its task repos), not evoray's
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports, resolved to the longest known module name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            parts = t.split(".")
            for n in range(len(parts), 0, -1):
                cand = ".".join(parts[:n])
                if cand in known:
                    if cand != name:
                        found.add(cand)
                    break
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_floors_only_point_down():
    upward = [f"{a} imports {b}" for a, deps in graph().items() for b in deps
              if FLOORS[b.split(".")[0]] > FLOORS[a.split(".")[0]]]
    assert upward == []


def test_no_import_circle():
    g = graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):     # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            # a package importing its own submodule is not a circle unless the submodule imports back
            if len(comp) > 1:
                circles.append(sorted(comp))
    for v in g:
        if v not in index:
            visit(v)
    assert circles == []


@pytest.mark.parametrize("name", ["ARCHITECTURE.md", "PAPERS.md", "../shared", "`shared/`"])
def test_nothing_cites_files_outside_the_repository(name):
    import subprocess
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    hits = [f for f in files if not f.endswith(".png") and f != "tests/test_layout.py"
            and name in (REPO / f).read_text(errors="replace")]
    assert hits == []
