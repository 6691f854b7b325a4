"""``python -m jobs.mmupt CONFIG.yaml [--set k=v ...] [--run-dir DIR]``: the same as ``evoray run``."""
from services.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint()
