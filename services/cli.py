"""``evoray``: run, resume, submit, report, bench and sandbox exec (the contract: docs/architecture.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from actors.sandbox.types import SandboxError
from services.config import ConfigError, load_config, parse_config
from services.placement import PlacementError


def _check_inputs(cfg) -> None:
    """Fail on an unreachable Ray, a tracker's missing package, a missing model or bad task data
    here, before Ray starts."""
    import os

    from services.controller import check_address
    from services.registry import lookup
    from services.tracking import check_trackers
    check_address(cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    check_trackers(cfg.tracking)
    lookup(cfg.job).check(cfg)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed
    try:
        return installed("evoray")
    except PackageNotFoundError:
        return "(not installed)"


def job_names_safe() -> list[str]:
    from services.registry import job_names
    try:
        return job_names()
    except Exception:     # a broken entry point must not break --help
        return ["srt", "mmupt", "dgm", "uigenie"]


def default_runs_base() -> Path:
    """``runs/`` here; inside a job submitted with plain ``ray job submit`` (whose working
    directory is a temporary copy) ``~/evoray-runs`` on the driver's node. ``EVORAY_RUNS`` wins."""
    import os
    if os.environ.get("EVORAY_RUNS"):
        return Path(os.environ["EVORAY_RUNS"])
    return Path("~/evoray-runs").expanduser() if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") else Path("runs")


def cmd_run(args) -> int:
    from actors.storage import is_uri
    from services.driver import run_job
    from services.run_state import prepare_new_run, remove_failed_start
    from services.run_store import new_run_dir
    cfg = load_config(args.config, args.set or [])
    run_dir = args.run_dir or str(new_run_dir(default_runs_base(), cfg.name))
    local = not is_uri(run_dir)
    if local:
        prepare_new_run(run_dir, type(cfg), empty=False)    # refuse a used directory at once
    _check_inputs(cfg)
    if local and prepare_new_run(run_dir, type(cfg), empty=True):
        print(f"reusing {run_dir}: the start that wrote it failed before its first checkpoint", file=sys.stderr)
    created = local and not Path(run_dir).exists()
    args.interrupted = f"evoray: interrupted; continue with `evoray resume {run_dir}`"
    try:
        print(run_job(cfg, run_dir, resume=False))
    except BaseException:
        if local and remove_failed_start(run_dir, type(cfg), created):
            args.interrupted = (f"evoray: interrupted before the first checkpoint; nothing to resume "
                                f"(removed {run_dir}); run the same `evoray run` again to start over")
        raise
    return 0


def resume_config(args):
    """The run's config with the ``--set`` changes resume accepts; refused before Ray starts when
    there is nothing to resume, the run is finished, or a key may not change."""
    import yaml

    from services.config import apply_override, check_resumable, dump_config
    from services.driver import open_store
    from services.run_state import check_resume
    from services.tracking import check_trackers
    from actors.storage import is_uri
    overrides = args.set or []
    if not is_uri(args.run_dir):
        root = Path(args.run_dir)
        if not root.is_dir():
            raise ConfigError(f"{args.run_dir} is not a directory")
        if not (root / "config.yaml").is_file():
            raise ConfigError(f"{args.run_dir} is not a run directory (no config.yaml)")
    store = open_store(args.run_dir, resume=True)
    config = store.root / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{args.run_dir} is not a run directory (no config.yaml)")
    try:
        raw = yaml.safe_load(config.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{config}: not valid YAML ({getattr(e, 'problem', e)})") from None
    cfg = parse_config(raw, str(config))
    check_resumable(type(cfg), overrides)
    check_resume(store.root, args.run_dir, type(cfg), overrides)
    check_trackers(cfg.tracking)
    if not overrides:
        return cfg
    for assignment in overrides:
        apply_override(raw, assignment)
    cfg = parse_config(raw, f"{config} with --set")
    check_trackers(cfg.tracking)
    store.write_config(dump_config(cfg))
    store.event("config_changed", changes=overrides)
    store.sync()
    print(f"{args.run_dir}/config.yaml: " + ", ".join(overrides), file=sys.stderr)
    return cfg


def cmd_resume(args) -> int:
    from services.driver import run_job
    cfg = resume_config(args)
    args.interrupted = f"evoray: interrupted; continue with `evoray resume {args.run_dir}`"
    print(run_job(cfg, args.run_dir, resume=True))
    return 0


def cmd_submit(args) -> int:
    from services.submit import submit
    return submit(args.config, args.set or [], args.address, args.run_dir, wait=not args.no_wait)


def cmd_job(args) -> int:
    from services import submit
    if args.command == "logs":
        return submit.logs(args.job_id, args.address, args.follow)
    return {"status": submit.status, "stop": submit.stop}[args.command](args.job_id, args.address)


def cmd_report(args) -> int:
    from services.report import write_report
    print(write_report(args.run_dir, args.compare or []))
    return 0


def cmd_bench(args) -> int:
    return args.bench_run(args) or 0


def cmd_sandbox_exec(args) -> int:
    """Run one program in the sandbox and print the contract's JSON; exit 0 whenever the sandbox
    itself worked, whatever the program did."""
    import json

    from actors.sandbox import ExecRequest, SandboxLimits, make_sandbox
    code = Path(args.file).read_text()
    stdin = Path(args.stdin).read_text() if args.stdin else ""
    limits = SandboxLimits(timeout_s=args.timeout, memory_mb=args.memory_mb)
    sandbox = make_sandbox(args.backend, limits)
    try:
        result = sandbox.run(ExecRequest.program(code, stdin, limits))
    finally:
        sandbox.close()
    print(json.dumps(result.to_json()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evoray", description="self-improvement loops on Ray")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run a job on the local Ray instance (or RAY_ADDRESS)",
        description="Run a job: check the config and its inputs (model, data), start or join Ray "
        "(ray.address, else RAY_ADDRESS, else a local instance), train, write the run directory. "
        "Ctrl-C stops it; `evoray resume RUN_DIR` continues from the last checkpoint.",
        epilog="example: evoray run jobs/configs/srt-smoke.yaml --set train.steps=4 --set tracking=[tensorboard]")
    run.add_argument("config", help="a job's YAML config, e.g. jobs/configs/srt-demo.yaml "
                     "(its job: key picks the loop: " + ", ".join(job_names_safe()) + ")")
    run.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                     help="override a config key; the value is YAML (repeatable), e.g. train.steps=5")
    run.add_argument("--run-dir", help="where the run writes config, metrics, samples, events, "
                     "checkpoints (a new or empty directory, or a URI); default: runs/NAME-YYYYmmdd-HHMMSS "
                     "(EVORAY_RUNS replaces runs/)")
    run.set_defaults(fn=cmd_run)
    sm = sub.add_parser("submit", help="submit a job to a Ray cluster (Ray Jobs API); follow its logs")
    sm.add_argument("config")
    sm.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config key")
    sm.add_argument("--address", help="the Jobs API, e.g. http://127.0.0.1:8265 (default: "
                    "RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
    sm.add_argument("--run-dir", help="a path every node sees, or a URI (s3://, gs://, hdfs://); "
                    "default: ./runs/NAME-TIME, absolute")
    sm.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    sm.set_defaults(fn=cmd_submit)
    for name, text in (("status", "a submitted job's state and run directory"),
                       ("logs", "a submitted job's logs"), ("stop", "stop a submitted job")):
        j = sub.add_parser(name, help=text)
        j.add_argument("job_id")
        j.add_argument("--address", help="the Jobs API (default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
        if name == "logs":
            j.add_argument("--follow", "-f", action="store_true", help="until the job ends")
        j.set_defaults(fn=cmd_job)
    res = sub.add_parser("resume", help="continue a stopped run from its last checkpoint",
                         description="Continue a stopped run from its last checkpoint, with its own "
                         "config.yaml; --set changes a key that does not alter what the checkpoints "
                         "mean (e.g. train.steps, eval.every, tracking, ray.*; see docs/usage.md).")
    res.add_argument("run_dir", help="the run directory (or URI) `evoray run` printed")
    res.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                     help="change a resumable key; written to RUN_DIR/config.yaml")
    res.set_defaults(fn=cmd_resume)
    rep = sub.add_parser("report", help="write report.md and PNG plots into a run directory")
    rep.add_argument("run_dir")
    rep.add_argument("--compare", action="append", metavar="RUN_DIR", help="overlay another run")
    rep.set_defaults(fn=cmd_report)
    bench = sub.add_parser("bench", help="benchmarks; each prints a table and writes JSON")
    names = bench.add_subparsers(dest="name", required=True)
    from services.bench import benchmarks
    for name, bench in benchmarks().items():
        b = names.add_parser(name, help=bench.help, conflict_handler="resolve")
        bench.add_args(b)
        b.add_argument("--out", default="bench-results", help="directory for the JSON result")
        b.set_defaults(fn=cmd_bench, bench_run=bench.run)
    sandbox = sub.add_parser("sandbox", help="isolated code execution")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    ex = sandbox_sub.add_parser("exec", help="run one Python program in the sandbox; print JSON")
    ex.add_argument("file")
    ex.add_argument("--backend", choices=["auto", "docker", "bwrap"], default="auto")
    ex.add_argument("--timeout", type=float, default=10.0, help="wall-time limit, seconds")
    ex.add_argument("--memory-mb", type=int, default=512)
    ex.add_argument("--stdin", metavar="FILE", help="file fed to the program's stdin")
    ex.set_defaults(fn=cmd_sandbox_exec)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, OSError, ValueError, SandboxError, PlacementError, ConnectionError) as e:
        print(f"evoray: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(getattr(args, "interrupted", "evoray: interrupted"), file=sys.stderr)
        return 130


def one_line(e: BaseException) -> str:
    """An error as one line: its text with line breaks folded (an OSError without text: its type)."""
    text = " ".join(str(e).split())
    return text or type(e).__name__


def run_entrypoint() -> None:
    """``python -m jobs.NAME CONFIG.yaml [...]`` is ``evoray run CONFIG.yaml [...]``: the
    entrypoint ``ray job submit`` runs."""
    sys.exit(main(["run", *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
