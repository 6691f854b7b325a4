"""Plots and a markdown section for a DGM run directory (its ``archive.parquet``).

* ``dgm_lineage.png`` — the archive as a tree, like the DGM paper's archive figure: y is the
  generation, x a tidy layout (leaves left to right in depth-first order, each parent centred
  over its children), colour the score; admitted agents filled, rejected/error ones small and
  hollow; the best agent and its lineage drawn on top.
* ``dgm_progress.png`` — best admitted score and archive size against attempt order (``created``).

:func:`write_dgm_report` is the entry point; ``services/report.py`` adds its markdown to report.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from jobs.dgm.archive import ARCHIVE_FILE, Archive, ArchiveRow
from services.figures import new_figure, save_png

LINEAGE_PNG = "dgm_lineage.png"
PROGRESS_PNG = "dgm_progress.png"
_NON_ADMITTED_WIDTH = 0.6   # rejected/error leaves take less room: they end their branch


def best_agent(rows: list[ArchiveRow]) -> Optional[ArchiveRow]:
    """The admitted agent with the highest score; the earliest created on ties."""
    admitted = [r for r in rows if r.status == "admitted"]
    return max(admitted, key=lambda r: (r.score, -r.created.timestamp()), default=None)


def _lineage(archive: Archive, agent_id: str) -> list[str]:
    """Root-first lineage, cut where a parent is missing (a report must not fail on that)."""
    path, current = [], agent_id
    while current is not None and current in archive and current not in path:
        path.append(current)
        current = archive.get(current).parent_id
    return path[::-1]


# --- layout --------------------------------------------------------------------------------------

def tree_layout(rows: list[ArchiveRow]) -> dict[str, tuple[float, float]]:
    """agent_id → (x, generation). Leaves get consecutive x in depth-first order (children by
    creation time); a parent sits at the midpoint of its first and last child. An agent whose
    parent is missing from the archive starts a tree of its own, placed to the right."""
    ids = {r.agent_id for r in rows}
    children: dict[Optional[str], list[ArchiveRow]] = {}
    for r in sorted(rows, key=lambda r: (r.created, r.agent_id)):
        children.setdefault(r.parent_id if r.parent_id in ids else None, []).append(r)
    pos: dict[str, tuple[float, float]] = {}
    seen: set[str] = set()   # a parent cycle (a corrupt archive) must not recurse forever
    next_x = 0.0

    def place(row: ArchiveRow) -> float:
        nonlocal next_x
        seen.add(row.agent_id)
        kids = [k for k in children.get(row.agent_id, []) if k.agent_id not in seen]
        if kids:
            xs = [place(k) for k in kids]
            x = (xs[0] + xs[-1]) / 2
        else:
            width = 1.0 if row.status == "admitted" else _NON_ADMITTED_WIDTH
            x = next_x + width / 2
            next_x += width
        pos[row.agent_id] = (x, float(row.generation))
        return x

    for root in children.get(None, []) + [r for r in rows if r.parent_id in ids]:
        if root.agent_id not in seen:
            place(root)
    return pos


# --- plots ---------------------------------------------------------------------------------------

def plot_lineage(archive: Archive, path: Path) -> bool:
    """dgm_lineage.png; False (nothing written) for an empty archive."""
    rows = archive.rows
    if not rows:
        return False
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    pos = tree_layout(rows)
    best = best_agent(rows)
    path_ids = set(_lineage(archive, best.agent_id)) if best else set()
    cmap, norm = matplotlib.colormaps["viridis"], Normalize(0.0, 1.0)
    width = max(6.0, min(24.0, 0.55 * max(x for x, _ in pos.values()) + 2.5))
    height = max(3.5, min(16.0, 0.9 * (max(g for _, g in pos.values()) + 1) + 1.5))
    fig = new_figure((width, height))
    ax = fig.add_subplot()
    small = len(rows) > 40   # big archives: drop labels of rejected agents, shrink the rest
    for r in rows:
        if r.parent_id in pos:
            (x0, y0), (x1, y1) = pos[r.parent_id], pos[r.agent_id]
            on_path = r.agent_id in path_ids
            ax.plot([x0, x1], [y0, y1], color="crimson" if on_path else "0.65",
                    linewidth=2.6 if on_path else 0.9, zorder=3 if on_path else 1)
    for r in rows:
        x, y = pos[r.agent_id]
        if r.status == "admitted":
            ax.scatter([x], [y], s=260 if r is best else 150, c=[cmap(norm(r.score))],
                       marker="*" if r is best else "o", zorder=4,
                       edgecolors="crimson" if r.agent_id in path_ids else "black",
                       linewidths=2.0 if r.agent_id in path_ids else 0.6)
            ax.annotate(f"{r.agent_id}\n{r.score:.2f}", (x, y), xytext=(0, -11),
                        textcoords="offset points", ha="center", va="top",
                        fontsize=6 if small else 7.5, zorder=5,
                        bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.75))
        else:
            ax.scatter([x], [y], s=40, facecolors="none", zorder=2,
                       edgecolors="0.55" if r.status == "rejected" else "tab:red", linewidths=1.0)
            if not small:
                ax.annotate(r.agent_id, (x, y), xytext=(0, -6), textcoords="offset points",
                            ha="center", va="top", fontsize=5.5, color="0.45")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="score (fraction solved)",
                 shrink=0.8)
    ax.invert_yaxis()   # the root at the top, like the paper's figure
    gens = sorted({int(g) for _, g in pos.values()})
    if len(gens) <= 25:
        ax.set_yticks(gens)
    else:
        from matplotlib.ticker import MaxNLocator
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("generation")
    ax.set_xticks([])
    ax.margins(x=0.04, y=0.12)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    title = "DGM archive"
    if best:
        title += f": best {best.agent_id} ({best.score:.3f}), its lineage in red"
    ax.set_title(title + " — hollow: rejected (grey) / error (red)", fontsize=10)
    save_png(fig, path)
    return True


def progress_series(rows: list[ArchiveRow]) -> tuple[list[int], list[Optional[float]], list[int]]:
    """(attempt order 1..N, best admitted score so far or None, admitted count so far)."""
    order, best, size = [], [], []
    top: Optional[float] = None
    admitted = 0
    for i, r in enumerate(sorted(rows, key=lambda r: (r.created, r.agent_id)), start=1):
        if r.status == "admitted":
            admitted += 1
            top = r.score if top is None else max(top, r.score)
        order.append(i)
        best.append(top)
        size.append(admitted)
    return order, best, size


def plot_progress(archive: Archive, path: Path) -> bool:
    """dgm_progress.png; False (nothing written) for an empty archive."""
    rows = archive.rows
    if not rows:
        return False
    order, best, size = progress_series(rows)
    fig = new_figure((8.0, 4.2))
    ax = fig.add_subplot()
    pts = [(i, b) for i, b in zip(order, best) if b is not None]
    h1 = ax.step([i for i, _ in pts], [b for _, b in pts], where="post", color="tab:blue",
                 linewidth=2, label="best admitted score")
    ordered = sorted(rows, key=lambda r: (r.created, r.agent_id))
    adm = [(i, r.score) for i, r in zip(order, ordered) if r.status == "admitted"]
    h1 += [ax.scatter([i for i, _ in adm], [v for _, v in adm], s=14, color="tab:blue",
                      alpha=0.45, label="admitted agent's score")]
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("agent, in order of creation")
    ax.set_ylabel("best score", color="tab:blue")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    h2 = ax2.step(order, size, where="post", color="tab:orange", linestyle="--", linewidth=1.6,
                  label="archive size (admitted)")
    ax2.set_ylabel("admitted agents", color="tab:orange")
    ax2.set_ylim(0, max(size) * 1.1 + 1)
    ax.legend(handles=h1 + h2, loc="lower right", fontsize=8, framealpha=0.85)
    ax.set_title("DGM progress")
    save_png(fig, path)
    return True


# --- markdown ------------------------------------------------------------------------------------

def _md(s: object) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def dgm_markdown(archive: Archive, images: dict[str, bool]) -> str:
    rows = archive.rows
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("admitted", "rejected", "error")}
    out = ["## DGM archive", "",
           f"- agents: {len(rows)} — admitted {counts['admitted']}, rejected "
           f"{counts['rejected']}, error {counts['error']}"]
    best = best_agent(rows)
    if best:
        out.append(f"- **best agent: {_md(best.agent_id)}, score {best.score:.3f}** "
                   f"(stage {_md(best.stage)}, {best.n_tasks} tasks); lineage: "
                   + " → ".join(_md(a) for a in _lineage(archive, best.agent_id)))
    out.append("")
    for name, alt in ((LINEAGE_PNG, "DGM lineage"), (PROGRESS_PNG, "DGM progress")):
        if images.get(name):
            out += [f"![{alt}]({name})", ""]
    admitted = sorted(archive.admitted(), key=lambda r: (-r.score, r.agent_id))
    if admitted:
        out += ["| agent | parent | generation | score | stage | n_tasks |",
                "|---|---|---:|---:|---|---:|"]
        out += [f"| {_md(r.agent_id)} | {_md(r.parent_id or '—')} | {r.generation} | "
                f"{r.score:.3f} | {_md(r.stage)} | {r.n_tasks} |" for r in admitted]
        out.append("")
    else:
        out += ["No admitted agents.", ""]
    return "\n".join(out)


def write_dgm_report(run_dir: Path) -> tuple[dict[str, bool], str]:
    """Write the DGM plots into ``run_dir``; returns ({png name: written?}, markdown section)."""
    run_dir = Path(run_dir)
    path = run_dir / ARCHIVE_FILE
    if not path.is_file():
        return ({LINEAGE_PNG: False, PROGRESS_PNG: False},
                f"## DGM archive\n\nNo archive: `{path}` does not exist.\n")
    archive = Archive.load(path)
    images = {LINEAGE_PNG: plot_lineage(archive, run_dir / LINEAGE_PNG),
              PROGRESS_PNG: plot_progress(archive, run_dir / PROGRESS_PNG)}
    return images, dgm_markdown(archive, images)
