"""After ``make vllm-smoke``: the run sampled with vLLM, and its later steps' samples came from
policies above 0 (a weight sync reached the engine). Prints each step's versions; exit 1 if not."""
from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml


def main(run_dir: str) -> int:
    run = Path(run_dir)
    backend = yaml.safe_load((run / "config.yaml").read_text())["sampler"]["backend"]
    versions = {}
    for path in sorted((run / "samples").glob("train_step*.parquet")):
        versions[path.stem] = sorted({r["policy_version"] for r in pq.read_table(path).to_pylist()})
        print(f"{path.stem}: policy versions {versions[path.stem]}")
    newest = max((v for vs in versions.values() for v in vs), default=0)
    print(f"sampler.backend: {backend}; highest policy version sampled: {newest}")
    if backend != "vllm" or newest < 1:
        print("FAIL: expected samples from vLLM with a policy version above 0", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
