"""MM-UPT's report: SRT's, plus what the synthesis stage wrote."""
from __future__ import annotations

from pathlib import Path

from jobs.srt.report import md_escape


def synthesis_section(run_dir: Path, shown: int = 5) -> list[str]:
    """MM-UPT: what the synthesis stage wrote, per mode and verdict, and some kept questions."""
    import pyarrow.parquet as pq
    path = run_dir / "synthetic" / "questions.parquet"
    if not path.is_file():
        return []
    rows = pq.read_table(path).to_pylist()
    verdicts = ("kept", "malformed", "duplicate", "unanswerable")
    out = ["## Synthetic questions", "", "| mode | candidates | " + " | ".join(verdicts) + " |",
           "|---|" + "---:|" * (len(verdicts) + 1)]
    for mode in sorted({r["mode"] for r in rows}):
        mine = [r for r in rows if r["mode"] == mode]
        out.append(f"| {mode} | {len(mine)} | "
                   + " | ".join(str(sum(r["status"] == v for r in mine)) for v in verdicts) + " |")
    kept = [r for r in rows if r["status"] == "kept"][:shown]
    out.append("")
    out += [f"- `{md_escape(r['source_id'])}` ({r['mode']}): {md_escape(r['question'])} — majority "
            f"{md_escape(r['majority'])}, share {r['share']:.2f}" for r in kept]
    return out + ([""] if kept else [])


def write_report(run_dir: Path, compare) -> Path:
    from jobs.srt.report import write_report as srt_report
    return srt_report(run_dir, compare, sections=[synthesis_section])
