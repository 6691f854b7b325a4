"""``python -m jobs.srt CONFIG.yaml [--set k=v ...] [--run-dir DIR]`` — the entrypoint that
``ray job submit`` runs; identical to ``evoray run``."""
import sys

from services.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
