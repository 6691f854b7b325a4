"""Placement without a cluster: role requests from configs, the feasibility check's verdicts and
messages on hand-made node lists, colocated bundles, and the actor options handed out."""
from __future__ import annotations

import pytest

from services.config import RayConfig, load_config, parse_config
from services.placement import GIB, Placement, PlacementError, RoleSpec, bundle_demands, check_feasible, role_specs

CPU_NODE = {"CPU": 8.0, "memory": 32 * GIB}
GPU_NODE = {"CPU": 16.0, "GPU": 2.0, "memory": 64 * GIB}
SANDBOX_NODE = {"CPU": 8.0, "sandbox": 8.0, "memory": 16 * GIB}


def srt(**sections) -> object:
    return parse_config({"job": "srt", **sections})


def test_role_specs_read_each_roles_section():
    cfg = srt(sampler={"num_actors": 2, "num_gpus": 1, "num_cpus": 4},
              learner={"num_gpus": 1, "memory_gb": 40},
              sandbox={"workers": 3, "resources": {"sandbox": 1}})
    specs = {s.role: s for s in role_specs(cfg)}
    assert specs["sampler"].count == 2 and specs["sampler"].demand() == {"CPU": 4.0, "GPU": 1.0}
    assert specs["learner"].demand() == {"CPU": 1.0, "GPU": 1.0, "memory": 40 * GIB}
    assert specs["sandbox"].demand() == {"CPU": 0.25, "sandbox": 1.0} and specs["sandbox"].restartable
    assert not specs["learner"].restartable          # optimizer state: a lost learner means resume


def test_every_shipped_config_has_roles():
    for name in ("srt-demo", "dgm-demo", "uigenie-demo"):
        roles = [s.role for s in role_specs(load_config(f"jobs/configs/{name}.yaml"))]
        assert "sampler" in roles and len(roles) == len(set(roles))


def test_too_many_gpus_names_the_role_and_resource():
    specs = [RoleSpec("sampler", 1, num_gpus=4)]
    with pytest.raises(PlacementError, match=r"role 'sampler' asks for 4 GPU per actor; "
                                             r"the largest node has 2 GPU \(cluster total: 4 GPU\)"):
        check_feasible(specs, [GPU_NODE, GPU_NODE])
    with pytest.raises(PlacementError, match="no node has 'GPU'"):
        check_feasible(specs, [CPU_NODE])


def test_custom_resource_and_memory_are_checked():
    with pytest.raises(PlacementError, match="role 'sandbox' asks for 1 sandbox per actor; no node has 'sandbox'"):
        check_feasible([RoleSpec("sandbox", 2, resources={"sandbox": 1})], [CPU_NODE])
    with pytest.raises(PlacementError, match="40 GiB memory per actor; the largest node has 32 GiB memory"):
        check_feasible([RoleSpec("learner", 1, memory_gb=40)], [CPU_NODE])
    check_feasible([RoleSpec("sandbox", 2, resources={"sandbox": 1})], [CPU_NODE, SANDBOX_NODE])


def test_each_fits_but_not_together():
    # 2 GPUs per node, four actors of 1 GPU + a learner of 1 GPU = 5 > 4 in the cluster
    specs = [RoleSpec("sampler", 4, num_gpus=1), RoleSpec("learner", 1, num_gpus=1)]
    with pytest.raises(PlacementError, match=r"roles \['sampler', 'learner'\] ask for 5 GPU in all; the cluster has 4 GPU"):
        check_feasible(specs, [GPU_NODE, GPU_NODE])
    # resources that exist only on different nodes
    with pytest.raises(PlacementError, match="no single node has all of them"):
        check_feasible([RoleSpec("odd", 1, num_gpus=1, resources={"sandbox": 1})], [GPU_NODE, SANDBOX_NODE])


def test_colocated_learner_shares_the_first_samplers_bundle():
    specs = [RoleSpec("sampler", 2, num_cpus=2, num_gpus=1), RoleSpec("learner", 1, num_cpus=4, num_gpus=1)]
    bundles = bundle_demands(specs, colocated=True)
    assert bundles == [("sampler+learner", {"CPU": 6.0, "GPU": 1.0}), ("sampler", {"CPU": 2.0, "GPU": 1.0})]
    # colocated, four GPU actors need only the two GPUs of one node
    check_feasible([RoleSpec("sampler", 2, num_gpus=1), RoleSpec("learner", 1, num_gpus=1)], [GPU_NODE], colocated=True)
    with pytest.raises(PlacementError):
        check_feasible([RoleSpec("sampler", 2, num_gpus=1), RoleSpec("learner", 1, num_gpus=1)], [GPU_NODE])


def test_actor_options(monkeypatch):
    specs = [RoleSpec("sampler", 2, num_cpus=2, num_gpus=1, restartable=True, grouped=True),
             RoleSpec("learner", 1, num_cpus=4, num_gpus=1, memory_gb=2, grouped=True),
             RoleSpec("sandbox", 1, num_cpus=0.5, resources={"sandbox": 1}, restartable=True)]
    p = Placement("run-7", specs, RayConfig(placement="colocated", max_restarts=5))
    p.groups = {"sampler": "PG", "learner": "PG"}
    captured = {}

    class Strategy:
        def __init__(self, pg, placement_group_bundle_index):
            captured.setdefault("bundles", []).append((pg, placement_group_bundle_index))
    monkeypatch.setattr("ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy", Strategy)
    s0, s1 = p.options("sampler", 0), p.options("sampler", 1)
    learner = p.options("learner", name=p.actor_name("learner"))
    sandbox = p.options("sandbox", 0)
    assert s0["name"] == "run-7:sampler-0" and learner["name"] == "run-7:learner"
    assert s0["num_gpus"] == 0.5 and learner["num_gpus"] == 0.5 and s1["num_gpus"] == 1
    assert captured["bundles"] == [("PG", 0), ("PG", 1), ("PG", 0)]
    assert s0["max_restarts"] == 5 and s0["max_task_retries"] == 0 and "max_restarts" not in learner
    assert learner["memory"] == 2 * GIB
    assert sandbox == {"name": "run-7:sandbox-0", "num_cpus": 0.5, "num_gpus": 0, "resources": {"sandbox": 1},
                       "max_restarts": 5, "max_task_retries": 0}


def test_ray_section_rejects_unknown_keys():
    from services.config import ConfigError
    with pytest.raises(ConfigError, match="ray.placment: unknown key"):
        parse_config({"job": "srt", "ray": {"placment": "colocated"}})
    with pytest.raises(ConfigError, match="ray.placement"):
        parse_config({"job": "srt", "ray": {"placement": "sideways"}})


def test_where_retries_the_state_api_then_falls_back_to_bundles(monkeypatch):
    """A busy box's dashboard may not answer at once: retried, and failing that, the placement
    groups' bundle nodes (the GCS) say where the roles run, with the reason recorded."""
    import services.placement as placement
    monkeypatch.setattr(placement, "alive_nodes", lambda: [{"NodeID": "n1", "NodeManagerAddress": "10.0.0.1"}])
    p = Placement("run", [RoleSpec("sampler", 1)], RayConfig())
    calls = []

    def flaky(nodes):
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("state API timed out")
        return {"sampler": [{"name": "run:sampler-0", "node_id": "n1", "node_ip": nodes["n1"]}]}
    monkeypatch.setattr(p, "_where_state_api", flaky)
    where, source = p.where(wait_s=0)
    assert len(calls) == 3 and source == "state API" and where["sampler"][0]["node_ip"] == "10.0.0.1"

    monkeypatch.setattr(p, "_where_state_api", lambda nodes: (_ for _ in ()).throw(ConnectionError("no dashboard")))
    monkeypatch.setattr(p, "_where_bundles", lambda nodes: {"sampler": [{"name": "run:sampler-0", "node_id": "n1",
                                                                          "node_ip": "10.0.0.1"}]})
    where, source = p.where(wait_s=0)
    assert where["sampler"][0]["node_ip"] == "10.0.0.1"
    assert source.startswith("placement groups") and "ConnectionError: no dashboard" in source


def test_submit_retries_the_transient_no_agent_answer():
    from services.submit import retry_transient
    answers = iter([RuntimeError("Request failed with status code 503: No available agent to submit job, "
                                 "please try again later."), RuntimeError("No available agent to submit job"), "job-1"])

    def call():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer
    assert retry_transient(call, sleep=lambda s: None) == "job-1"
    with pytest.raises(RuntimeError, match="404"):          # anything else is not retried
        retry_transient(lambda: (_ for _ in ()).throw(RuntimeError("status code 404")), sleep=lambda s: None)
    always = lambda: (_ for _ in ()).throw(RuntimeError("No available agent to submit job"))
    with pytest.raises(RuntimeError, match="No available agent"):
        retry_transient(always, attempts=3, sleep=lambda s: None)
