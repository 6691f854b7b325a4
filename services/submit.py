"""``evoray submit|status|logs|stop``: the Ray Jobs API (``JobSubmissionClient``).

``submit`` validates the config here, ships the project and the resolved config as the job's
working directory, and runs ``python -m jobs.JOB CONFIG --run-dir DIR`` on the cluster — the same
entrypoint ``ray job submit --working-dir . -- python -m jobs.srt CONFIG.yaml`` runs."""
from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from services.config import dump_config, load_config

PROJECT = Path(__file__).resolve().parents[1]
NOT_SHIPPED = (".venv", ".git", "runs", "bench-results", "__pycache__", "*.egg-info", ".pytest_cache",
               "node_modules", "*.pyc")
SUBMITTED_CONFIG = ".evoray/submitted.yaml"


def client(address: str | None):
    """A job client (with Ray's token authentication when a token is at hand)."""
    from ray.job_submission import JobSubmissionClient

    from services.controller import use_token_auth
    use_token_auth()
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    try:
        return JobSubmissionClient(address)
    except Exception as e:     # connection refused, bad token, no dashboard
        raise ConnectionError(f"cannot reach the Ray Jobs API at {address or 'the local cluster'}: "
                              f"{str(e).splitlines()[0]}") from None


def stage_project(config_text: str) -> Path:
    """A copy of the project (sources, configs, data; no venv or runs) plus the resolved config."""
    staging = Path(tempfile.mkdtemp(prefix="evoray-submit-"))
    shutil.copytree(PROJECT, staging / "project", ignore=shutil.ignore_patterns(*NOT_SHIPPED))
    (staging / "project" / SUBMITTED_CONFIG).parent.mkdir(exist_ok=True)
    (staging / "project" / SUBMITTED_CONFIG).write_text(config_text)
    return staging / "project"


def default_run_dir(name: str) -> str:
    from services.run_store import new_run_dir
    return str(new_run_dir(Path.cwd() / "runs", name).resolve())


def submit(config: str, overrides: list[str], address: str | None, run_dir: str | None,
           wait: bool) -> int:
    cfg = load_config(config, overrides)
    run_dir = run_dir or default_run_dir(cfg.name)
    staging = stage_project(dump_config(cfg))
    entrypoint = f"python -m jobs.{cfg.job} {SUBMITTED_CONFIG} --run-dir {shlex.quote(run_dir)}"
    env = {k: os.environ[k] for k in ("RAY_AUTH_MODE",) if k in os.environ}
    jobs = client(address)
    try:
        job_id = retry_transient(lambda: jobs.submit_job(
            entrypoint=entrypoint, runtime_env={"working_dir": str(staging), "env_vars": env},
            metadata={"evoray_config": str(config), "evoray_run_dir": run_dir, "evoray_job": cfg.job}))
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    print(f"submitted {job_id}: {entrypoint}", file=sys.stderr)
    print(f"run directory: {run_dir}", file=sys.stderr)
    if not wait:
        print(job_id)
        return 0
    return follow(jobs, job_id)


# what the Jobs API answers while a node's agent is still coming up (a fresh or busy cluster)
TRANSIENT = ("No available agent to submit job", "please try again later")


def retry_transient(call, attempts: int = 8, wait_s: float = 2.0, sleep=None):
    """``call()``, again after a pause while the cluster says it is not ready yet; any other error,
    or the same one past ``attempts``, is raised."""
    import time
    sleep = sleep or time.sleep
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as e:     # the SDK raises RuntimeError with the server's text
            if attempt == attempts or not any(t in str(e) for t in TRANSIENT):
                raise
            print(f"the cluster is not ready to take a job ({str(e).splitlines()[0][:100]}); "
                  f"retrying in {wait_s:.0f} s ({attempt}/{attempts - 1})", file=sys.stderr)
            sleep(wait_s)
            wait_s = min(wait_s * 1.5, 15.0)


def follow(jobs, job_id: str) -> int:
    """Print the job's logs until it ends; 0 when it succeeded."""
    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()
    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on (`evoray stop {job_id}` ends it)", file=sys.stderr)
        return 130
    info = job_info(jobs, job_id)
    print(f"job {job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""), file=sys.stderr)
    return 0 if info.status == "SUCCEEDED" else 1


def job_info(jobs, job_id: str):
    try:
        return jobs.get_job_info(job_id)
    except RuntimeError as e:       # the SDK's "Request failed with status code 404: ..."
        raise ValueError(f"job {job_id}: {str(e).split(': ', 1)[-1]}") from None


def status(job_id: str, address: str | None) -> int:
    info = job_info(client(address), job_id)
    meta = info.metadata or {}
    print(f"{job_id}: {info.status.value}")
    for key, label in (("evoray_job", "job"), ("evoray_config", "config"), ("evoray_run_dir", "run directory")):
        if key in meta:
            print(f"  {label}: {meta[key]}")
    if info.message:
        print(f"  {info.message}")
    return 0


def logs(job_id: str, address: str | None, follow_logs: bool) -> int:
    jobs = client(address)
    job_info(jobs, job_id)
    if follow_logs:
        return follow(jobs, job_id)
    sys.stdout.write(jobs.get_job_logs(job_id))
    return 0


def stop(job_id: str, address: str | None) -> int:
    jobs = client(address)
    meta = job_info(jobs, job_id).metadata or {}
    stopped = jobs.stop_job(job_id)
    print(f"{job_id}: {'stop requested' if stopped else 'already ended'}")
    if "evoray_run_dir" in meta:
        print(f"  continue it with: evoray resume {meta['evoray_run_dir']}")
    return 0
