"""Plots and a markdown section for a UI-Genie run directory (its metrics by generation).

* ``uigenie_generations.png`` — left: held-out success rate (all tasks and per level) and the
  exploration solve rate against generation, the base model as a dashed line; right: the reward
  model's step- and outcome-level F1 on the held-out labelled set, and the dataset sizes.
"""
from __future__ import annotations

from pathlib import Path

from services.figures import new_figure, save_png

GENERATIONS_PNG = "uigenie_generations.png"


def by_generation(metrics: list[dict]) -> dict[str, dict[int, float]]:
    """name → {generation: value}; the last value logged wins (a resumed generation overwrites)."""
    out: dict[str, dict[int, float]] = {}
    for m in sorted(metrics, key=lambda m: m["time"]):
        out.setdefault(m["name"], {})[int(m["step"])] = float(m["value"])
    return out


def plot_generations(series: dict[str, dict[int, float]], path: Path) -> bool:
    if "gen/success_rate" not in series:
        return False
    fig = new_figure((11.0, 4.2))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    gens = sorted(series["gen/success_rate"])
    for ax in (left, right):
        ax.set_xticks(gens)                  # generations are whole numbers
    for name, label, style in [("gen/success_rate", "held-out success", dict(linewidth=2.4, marker="o")),
                               ("explore/solved_rate", "exploration tasks solved (beam search)",
                                dict(linestyle=":", marker="s"))]:
        if name in series:
            xs = sorted(series[name])
            left.plot(xs, [series[name][x] for x in xs], label=label, **style)
    for name in sorted(n for n in series if n.startswith("gen/success_rate_level")):
        xs = sorted(series[name])
        left.plot(xs, [series[name][x] for x in xs], alpha=0.6, linewidth=1,
                  label=f"held-out, level {name[-1]}")
    base = series.get("base/success_rate", {}).get(-1)
    if base is not None:
        left.axhline(base, color="grey", linestyle="--", label=f"base model ({base:.2f})")
    left.set_xlabel("generation")
    left.set_ylabel("success rate")
    left.set_ylim(-0.02, 1.02)
    left.grid(True, alpha=0.3)
    left.legend(fontsize=7, loc="upper left")
    left.set_title("agent")
    for name, label in [("rm/step_f1", "RM step-level F1"), ("rm/outcome_f1", "RM outcome-level F1")]:
        if name in series:
            xs = sorted(series[name])
            right.plot(xs, [series[name][x] for x in xs], marker="o", label=label)
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel("generation")
    right.set_ylabel("F1 (held-out labelled set)")
    right.grid(True, alpha=0.3)
    twin = right.twinx()
    for name, label in [("data/agent_examples", "agent examples"), ("data/rm_examples", "RM examples")]:
        if name in series:
            xs = sorted(series[name])
            twin.bar([x + (0.15 if "rm" in name else -0.15) for x in xs], [series[name][x] for x in xs],
                     width=0.3, alpha=0.25, label=label)
    twin.set_ylabel("dataset size")
    h1, l1 = right.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    right.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    right.set_title("reward model and data")
    save_png(fig, path)
    return True


def uigenie_markdown(series: dict[str, dict[int, float]], images: dict[str, bool]) -> str:
    levels = sorted(n for n in series if n.startswith("gen/success_rate_level"))
    cols = [("gen/success_rate", "held-out success"),
            *((n, f"level {n[len('gen/success_rate_level'):]}") for n in levels),
            ("explore/solved_rate", "explore solved"),
            ("explore/beam_only_solved", "beam-only solves"),
            ("rm/step_f1", "RM step F1"), ("rm/outcome_f1", "RM outcome F1"),
            ("data/agent_examples", "agent examples"), ("data/rm_examples", "RM examples"),
            ("data/hard_negatives", "hard negatives (new)"), ("time/gen_s", "seconds")]
    gens = sorted(series.get("gen/success_rate", {}))
    out = ["## UI-Genie generations", ""]
    base = series.get("base/success_rate", {}).get(-1)
    if base is not None:
        out += [f"- base model (before any training): held-out success {base:.3f}", ""]
    out += ["| generation | " + " | ".join(c for _, c in cols) + " |",
            "|---:|" + "---:|" * len(cols)]
    for g in gens:
        cells = []
        for name, _ in cols:
            v = series.get(name, {}).get(g)
            cells.append("—" if v is None else f"{v:.0f}" if name.startswith(("data/", "time/", "explore/beam")) else f"{v:.3f}")
        out.append(f"| {g} | " + " | ".join(cells) + " |")
    if images.get(GENERATIONS_PNG):
        out += ["", f"![generations]({GENERATIONS_PNG})"]
    return "\n".join(out) + "\n"


def write_uigenie_report(run_dir: Path, metrics: list[dict]) -> str:
    series = by_generation(metrics)
    images = {GENERATIONS_PNG: plot_generations(series, run_dir / GENERATIONS_PNG)}
    return uigenie_markdown(series, images)
