"""SRT's report (MM-UPT's too): plots and a markdown summary of a run's held-out accuracy and training signals.

Reads (never writes) the run's ``metrics.parquet``, ``config.yaml`` and ``events.jsonl`` and writes
``heldout.png``, ``training.png`` and ``report.md`` into the run directory, each atomically.

Public entry points (the CLI calls these; no argument parsing here):

* :func:`write_report` -- the plots and ``report.md``; returns the path of ``report.md``.
* :func:`demo_table` -- a plain-text table of held-out accuracy by evaluation step (printed by
  ``make demo``).

Plots use matplotlib's object-oriented API with the Agg canvas, so nothing here touches pyplot's
global state or needs a display.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

from services.figures import new_figure, save_png
from services.run_store import atomic_write_text

from jobs.srt.run_reader import (EVENTS_OF_INTEREST, METRICS_FILE, PASS1, REWARD_METRICS, VAL_PASS1,  # noqa: F401
                                 Run, Series, _as_int, load_run)

HELDOUT_PNG = "heldout.png"
TRAINING_PNG = "training.png"
REPORT_MD = "report.md"


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

def _xy(series: Series):
    return [s for s, _ in series], [v for _, v in series]


def _collapse_steps(run: Run) -> list[int]:
    return sorted({_as_int(e.get("step")) for e in run.events
                   if e.get("event") == "collapse_detected" and _as_int(e.get("step")) >= 0})


def _mark_collapses(ax, steps: Sequence[int], label: bool) -> None:
    for i, s in enumerate(steps):
        ax.axvline(s, color="tab:red", linestyle=":", linewidth=1.4, alpha=0.8,
                   label="collapse detected" if (label and i == 0) else None)


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _accuracy_ylim(ax, values: Iterable[float]) -> None:
    values = list(values)
    top = max(values) if values else 1.0
    ax.set_ylim(0.0, min(1.05, max(0.1, top * 1.12 + 0.03)))


def plot_heldout(run: Run, others: Sequence[Run], path: Path) -> bool:
    """heldout.png; False (nothing written) when the run logged no held-out metrics."""
    pass1, maj_name = run.series(PASS1), run.maj_name
    maj = run.series(maj_name) if maj_name else []
    if not pass1 and not maj:
        return False
    comparing = any(o.series(PASS1) for o in others)
    prefix = f"{run.label} " if comparing else ""
    fig = new_figure((8.0, 4.6))
    ax = fig.add_subplot()
    shown: list[float] = []
    if pass1:
        ax.plot(*_xy(pass1), marker="o", color="tab:blue", linewidth=2, label=f"{prefix}pass@1")
        shown += [v for _, v in pass1]
    if maj:
        ax.plot(*_xy(maj), marker="s", color="tab:blue" if comparing else "tab:orange",
                linestyle="--", alpha=0.75 if comparing else 1.0, linewidth=1.6,
                label=f"{prefix}{run.maj_label}")
        shown += [v for _, v in maj]
    val = run.series(VAL_PASS1)
    if val and not comparing:
        ax.plot(*_xy(val), marker="D", markersize=4, color="tab:green", linestyle=":", linewidth=1.6,
                label="val/pass@1 (picks checkpoints/best)")
        shown += [v for _, v in val]
    palette = ["tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
               "tab:gray", "tab:orange"]
    for i, other in enumerate(others):
        s = other.series(PASS1)
        if s:
            ax.plot(*_xy(s), marker="^", color=palette[i % len(palette)], linewidth=1.8,
                    label=f"{other.label} pass@1")
            shown += [v for _, v in s]
    _mark_collapses(ax, _collapse_steps(run), label=True)
    best = run.best()
    at = dict(pass1).get(best[1]) if best else None
    if best and at is not None:
        metric, step, value = best
        ax.plot([step], [at], marker="*", markersize=17, color="gold", markeredgecolor="black",
                linestyle="none", zorder=5,
                label=f"best checkpoint: step {step} ({metric} {value:.3f})")
    _accuracy_ylim(ax, shown)
    _integer_steps(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"Held-out accuracy: {run.label}" if not comparing
                 else f"Held-out pass@1: {run.label} vs " + ", ".join(o.label for o in others))
    ax.grid(True, alpha=0.3)
    if comparing:     # several runs' lines fill the panel: the legend goes beside it
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    save_png(fig, path)
    return True


def _same(a: Series, b: Series) -> bool:
    return len(a) == len(b) and all(x[0] == y[0] and abs(x[1] - y[1]) < 1e-9 for x, y in zip(a, b))


def _flat_zero(s: Series) -> bool:
    return all(abs(v) < 1e-12 for _, v in s)


def plot_training(run: Run, path: Path) -> bool:
    """training.png; False (nothing written) when the run logged none of its metrics."""
    rewards = [(n, run.series(n)) for n in REWARD_METRICS if run.series(n)]
    # hard majority-vote rewards: the pseudo-reward IS the majority agreement — one line, named so
    same = _same(run.series("train/pseudo_reward"), run.series("train/majority_agreement"))
    if same:
        rewards = [(n, s) for n, s in rewards if n != "train/majority_agreement"]
    loss, kl = run.series("train/loss"), run.series("train/kl")
    if kl and _flat_zero(kl):       # KL off (kl_coef 0): a flat line says nothing
        kl = []
    panels = int(bool(rewards)) + int(bool(loss or kl))
    if not panels:
        return False
    fig = new_figure((8.0, 3.3 * panels + 0.4))
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    collapses = _collapse_steps(run)
    styles = {"train/pseudo_reward": dict(color="tab:blue", linewidth=2),
              "train/majority_agreement": dict(color="tab:orange", linewidth=1.4, linestyle="--",
                                               marker=".", markersize=5),
              "train/true_reward": dict(color="tab:green", linewidth=1.6, linestyle="--"),
              "collapse/top_answer_share": dict(color="tab:red", linewidth=1.0, linestyle="-.",
                                                alpha=0.7),
              "collapse/prompt_echo_share": dict(color="tab:purple", linewidth=1.0, linestyle=":")}
    i = 0
    if rewards:
        ax = axes[i]
        i += 1
        for name, s in rewards:
            label = name.split("/", 1)[1] if name.startswith("train/") else name
            if same and name == "train/pseudo_reward":
                label = "pseudo_reward = majority_agreement"
            ax.plot(*_xy(s), label=label, **styles[name])
        _mark_collapses(ax, collapses, label=True)
        _accuracy_ylim(ax, [v for _, s in rewards for _, v in s])
        ax.set_ylabel("reward / share")
        ax.set_title(f"Training: {run.label}")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    if loss or kl:
        ax = axes[i]
        handles = []
        if loss:
            handles += ax.plot(*_xy(loss), color="tab:blue", linewidth=1.6, label="loss")
            ax.set_ylabel("loss", color="tab:blue")
        if kl:
            kax = ax.twinx() if loss else ax
            handles += kax.plot(*_xy(kl), color="tab:purple", linewidth=1.4, linestyle="--",
                                label="kl")
            kax.set_ylabel("kl", color="tab:purple")
        _mark_collapses(ax, collapses, label=False)
        ax.grid(True, alpha=0.3)
        # above the panel: loc="best" cannot see the twin axis's line
        ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2,
                  fontsize=8, frameon=False, borderaxespad=0.2)
        if not rewards:
            ax.set_title(f"Training: {run.label}")
    axes[-1].set_xlabel("step")
    _integer_steps(axes[-1])
    save_png(fig, path)
    return True


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

def _fmt(v: Optional[float], missing: str = "—") -> str:
    return missing if v is None else f"{v:.3f}"


def md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _eval_rows(run: Run) -> list[tuple[int, Optional[float], Optional[float], Optional[float]]]:
    """(step, pass@1, maj@k, val/pass@1) for every step with a held-out evaluation."""
    pass1 = dict(run.series(PASS1))
    maj = dict(run.series(run.maj_name)) if run.maj_name else {}
    val = dict(run.series(VAL_PASS1))
    return [(s, pass1.get(s), maj.get(s), val.get(s)) for s in sorted(set(pass1) | set(maj))]


def _event_details(ev: dict) -> str:
    extra = {k: v for k, v in ev.items() if k not in ("event", "step", "time")}
    parts = []
    for k, v in extra.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif not isinstance(v, str):
            v = json.dumps(v, sort_keys=True)
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def demo_table(run_dir: str | os.PathLike) -> str:
    """Plain-text table of held-out accuracy: the base model (step 0), each later evaluation,
    then the best pass@1 and its step."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    run = load_run(run_dir)
    rows = _eval_rows(run)
    if not rows:
        raise ValueError(f"{Path(run_dir) / METRICS_FILE} holds no held-out evaluations "
                         f"({PASS1} or heldout/maj@k)")
    has_maj = run.maj_name is not None
    base = rows[0] if rows[0][0] == 0 else None
    table = Table(title=f"{run.label}: held-out accuracy", box=box.ASCII, title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("pass@1", justify="right")
    if has_maj:
        table.add_column(run.maj_label, justify="right")
    if base is not None and base[1] is not None:
        table.add_column("pass@1 vs base", justify="right")

    def row(label: str, step: int, p1: Optional[float], mk: Optional[float]) -> None:
        cells = [label, _fmt(p1, "-")]
        if has_maj:
            cells.append(_fmt(mk, "-"))
        if base is not None and base[1] is not None:
            cells.append("-" if p1 is None or step == 0 else f"{p1 - base[1]:+.3f}")
        table.add_row(*cells)

    for step, p1, mk, _ in rows:
        row("base (step 0)" if step == 0 else f"step {step}", step, p1, mk)
    best = run.best()
    if best:
        metric, bstep, _ = best
        table.add_section()
        # the step checkpoints/best holds, by the metric that chose it; its held-out numbers
        row(f"best (step {bstep}, by {metric})", bstep, {r[0]: r[1] for r in rows}.get(bstep),
            {r[0]: r[2] for r in rows}.get(bstep))
    buf = io.StringIO()
    Console(file=buf, width=100, force_terminal=False, color_system=None, highlight=False,
            emoji=False, markup=False).print(table)
    return buf.getvalue().rstrip() + "\n"


def _markdown(run: Run, others: Sequence[Run], images: dict[str, bool], sections=()) -> str:
    out = [f"# Report: {run.name}", ""]
    out.append(f"- run directory: `{run.path}`")
    out.append(f"- reward: `{run.reward_kind or 'unknown'}`")
    last_step = max((s for series in run.metrics.values() for s, _ in series), default=None)
    if last_step is not None:
        out.append(f"- last logged step: {last_step}")
    out.append("")

    out += ["## Held-out evaluations", ""]
    rows = _eval_rows(run)
    has_val = any(r[3] is not None for r in rows)
    if rows:
        head = ["step", "pass@1"] + ([run.maj_label] if run.maj_name else [])
        head += ["val/pass@1"] if has_val else []
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---:"] * len(head)) + "|")
        for step, p1, mk, val in rows:
            cells = [str(step), _fmt(p1)] + ([_fmt(mk)] if run.maj_name else [])
            cells += [_fmt(val)] if has_val else []
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    else:
        out += ["No held-out evaluations were logged.", ""]
    best = run.best()
    if best:
        metric, step, value = best
        at = dict(run.series(PASS1)).get(step)
        out += [f"**Best checkpoint (`checkpoints/best`): step {step}, chosen by {metric} = {value:.3f}**"
                + (f"; held-out pass@1 there: {at:.3f}" if at is not None and metric != PASS1 else ""), ""]
        base = dict(run.series(PASS1)).get(0)
        if base is not None and at is not None:
            out += [f"Base model (step 0) pass@1: {base:.3f} "
                    f"(the best checkpoint's is {at - base:+.3f})", ""]
        top = run.best_pass1()
        if top and top[0] != step:
            out += [f"The highest held-out pass@1, {top[1]:.3f}, was at step {top[0]}: held-out "
                    f"numbers only measure; they never pick a checkpoint.", ""]

    out += ["## Events", ""]
    if run.events:
        for ev in run.events:
            line = f"- step {_as_int(ev.get('step'))}: **{md_escape(ev.get('event'))}**"
            if ev.get("time"):
                line += f" ({md_escape(ev['time'])})"
            details = _event_details(ev)
            if details:
                line += f" — {md_escape(details)}"
            out.append(line)
    else:
        out.append("No collapse, early-stop or best-checkpoint events.")
    out.append("")

    if others:
        out += ["## Comparison", "", "| run | reward | best held-out pass@1 | at step | final pass@1 |",
                "|---|---|---:|---:|---:|"]
        for r in [run, *others]:
            b, s = r.best_pass1(), r.series(PASS1)
            out.append(f"| {md_escape(r.name)} (`{md_escape(r.path)}`) | "
                       f"{md_escape(r.reward_kind or 'unknown')} | "
                       f"{_fmt(b[1]) if b else '—'} | {b[0] if b else '—'} | "
                       f"{_fmt(s[-1][1]) if s else '—'} |")
        missing = [o for o in others if not o.series(PASS1)]
        out.append("")
        for o in missing:
            out += [f"Note: `{o.path}` logged no {PASS1}; it is not plotted.", ""]

    for section in sections:
        out += section(run.path)
    out += ["## Plots", ""]
    if images.get(HELDOUT_PNG):
        out += [f"![held-out accuracy]({HELDOUT_PNG})", ""]
    if images.get(TRAINING_PNG):
        out += [f"![training metrics]({TRAINING_PNG})", ""]
    if not any(images.values()):
        out += ["No plottable metrics were logged.", ""]
    return "\n".join(out)


def _dedupe_labels(runs: Sequence[Run]) -> None:
    """Runs sharing a name and reward kind get their directory name appended, so the legend
    tells them apart."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.name = f"{r.name} [{r.path.resolve().name}]"


def write_report(run_dir: str | os.PathLike, compare: Sequence[str | os.PathLike] = (), sections=()) -> Path:
    """Write heldout.png and training.png (each when its metrics exist) and report.md into
    ``run_dir``; return the path of report.md. ``compare``: other run directories whose held-out
    pass@1 is overlaid on heldout.png; ``sections``: (run dir → markdown lines) a loop adds.
    Raises ValueError naming the missing file for a run (this one or a compared one) without
    metrics."""
    run = load_run(run_dir)
    others = [load_run(p) for p in compare]
    _dedupe_labels([run, *others])
    images = {HELDOUT_PNG: plot_heldout(run, others, run.path / HELDOUT_PNG),
              TRAINING_PNG: plot_training(run, run.path / TRAINING_PNG)}
    report = run.path / REPORT_MD
    atomic_write_text(report, _markdown(run, others, images, sections))
    return report
