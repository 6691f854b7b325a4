"""A new loop is one folder and one registration line: this ten-line loop (the example in
docs/architecture.md) registers itself and runs through the CLI, Ray, placement, the run store
and the report without any edit outside this file."""
from typing import Literal

import pytest

from services.config import JobConfig
from services.placement import RoleSpec
from services.registry import Job, register_job


# --- the whole loop ------------------------------------------------------------------------------
class CountConfig(JobConfig):
    job: Literal["count"] = "count"
    name: str = "count"
    steps: int = 3


def count(ctx):                                    # on the driver, Ray started, roles reserved
    import ray
    add = ray.remote(num_cpus=0.1)(lambda x: x + 1)
    value = 0
    for step in range(1, ctx.cfg.steps + 1):
        value = ray.get(add.remote(value))
        ctx.store.log(step, {"count/value": float(value)})


JOB = Job("count", CountConfig, roles=lambda cfg: [RoleSpec("adder", 1, num_cpus=0.1)], run=count)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def registered():
    """What the loop's line under ``[project.entry-points."evoray.jobs"]`` does, for this test only."""
    from services import registry
    register_job(JOB)
    yield
    registry._JOBS.pop("count")


@pytest.mark.slow
def test_a_registered_loop_runs_end_to_end(tmp_path, ray_local, registered):
    from services.cli import main
    config = tmp_path / "count.yaml"
    config.write_text("job: count\nsteps: 4\n")
    assert main(["run", str(config), "--run-dir", str(tmp_path / "run")]) == 0
    from services.run_store import RunStore
    store = RunStore(tmp_path / "run")
    assert store.metric_series("count/value") == [(s, float(s)) for s in range(1, 5)]
    assert "job: count" in (tmp_path / "run" / "config.yaml").read_text()


def test_a_registered_loop_has_its_config_checked(tmp_path, registered, capsys):
    from services.cli import main
    config = tmp_path / "count.yaml"
    config.write_text("job: count\nstpes: 4\n")
    assert main(["run", str(config)]) == 2
    assert "stpes: unknown key" in capsys.readouterr().err
