"""The cluster files agree with each other and with the code, without a cluster: the manifests
parse, the VM launcher passes Ray's own schema, every role of every cluster config fits a worker
group (and no group is left unused), the RayJobs name real configs, and the Grafana dashboard only
plots metrics the loops export."""
import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from services.config import load_config
from services.metrics import prometheus_name
from services.placement import role_specs

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CONFIGS = sorted((ROOT / "jobs/configs/cluster").glob("*.yaml"))
RAYJOBS = sorted((CLUSTER / "kuberay").glob("rayjob-*.yaml"))
LAUNCHER = CLUSTER / "launcher/aws.yaml"
DASHBOARD = CLUSTER / "grafana/evoray.json"
LAUNCHER_JOBS = ("srt", "dgm")      # the VM launcher has no KVM nodes for UI-Genie's emulators

# What the loops export: every metric-key literal ("split/metric") in the code that logs them.
METRIC_KEY = re.compile(r'"([a-z]+/[a-z_]+(?:@\d+)?)"')
EXPORTED = {prometheus_name(key) for path in [*(ROOT / "jobs").rglob("*.py"), *(ROOT / "services").glob("*.py"),
                                                 *(ROOT / "actors" / "weights").glob("*.py")]
            for key in METRIC_KEY.findall(path.read_text())}


def documents(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def raycluster() -> dict:
    return next(d for d in documents(CLUSTER / "kuberay/raycluster.yaml") if d["kind"] == "RayCluster")


def quantity(value) -> float:
    """A Kubernetes quantity ("48Gi", "500m", 8) as a number (bytes for memory)."""
    text = str(value)
    for suffix, factor in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("Ti", 2**40), ("m", 1e-3)):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * factor
    return float(text)


def group_resources(group: dict) -> dict[str, float]:
    """What Ray sees on one pod of a worker group, as KubeRay starts it: rayStartParams first,
    else the Ray container's limits."""
    params = group["rayStartParams"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    found = {"CPU": quantity(params.get("num-cpus", limits.get("cpu", 0))),
             "GPU": quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0))),
             "memory": quantity(params.get("memory", limits.get("memory", 0)))}
    if "resources" in params:   # KubeRay's quoting: a YAML string holding a JSON string
        found.update(json.loads(json.loads(params["resources"])))
    return {k: float(v) for k, v in found.items() if v}


def kuberay_groups() -> dict[str, dict[str, float]]:
    return {g["groupName"]: group_resources(g) for g in raycluster()["spec"]["workerGroupSpecs"]}


def launcher_types() -> dict[str, dict[str, float]]:
    cfg = yaml.safe_load(LAUNCHER.read_text())
    return {name: t["resources"] for name, t in cfg["available_node_types"].items()
            if name != cfg["head_node_type"]}


def fits(demand: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in demand.items())


def roles(path: Path, overrides=()) -> list:
    return [s for s in role_specs(load_config(path, list(overrides))) if s.count > 0]


# -- (1) every YAML parses -------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(CLUSTER.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_yaml_parses_and_manifests_have_kind(path):
    docs = documents(path)
    assert docs
    if "kuberay" in path.parts:
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), path


def test_every_ray_container_has_the_token():
    cluster = raycluster()
    secret = cluster["spec"]["authOptions"]["secretName"]
    pods = [cluster["spec"]["headGroupSpec"]] + cluster["spec"]["workerGroupSpecs"]
    for pod in pods:
        env = {e["name"]: e for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "auth_token"}


# -- (2) the VM launcher passes Ray's own schema, and a broken copy does not --------------------------
def launcher_check(cfg: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config
    # prepare_config fills in the defaults `ray up` adds (validate_config wants them); offline
    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_launcher_passes_rays_validation():
    launcher_check(yaml.safe_load(LAUNCHER.read_text()))


@pytest.mark.parametrize("breakage", [{"max_workers": "many"}, {"max_wrokers": 3}])
def test_broken_launcher_fails_rays_validation(breakage):
    cfg = yaml.safe_load(LAUNCHER.read_text()) | breakage
    with pytest.raises(jsonschema.ValidationError):
        launcher_check(cfg)


# -- (3) roles ↔ worker groups, RayJobs ↔ configs -----------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_role_fits_a_worker_group(config):
    groups = kuberay_groups()
    for spec in roles(config):
        need = spec.demand()
        assert any(fits(need, g) for g in groups.values()), f"{spec.role} {need}: no group of {groups}"


@pytest.mark.parametrize("config", [c for c in CONFIGS if load_config(c).job in LAUNCHER_JOBS],
                         ids=lambda p: p.name)
def test_every_role_fits_a_launcher_node_type(config):
    vms = launcher_types()
    for spec in roles(config):
        need = spec.demand()
        need.pop("memory", None)        # VM node types declare none: Ray measures it on the VM
        assert any(fits(need, t) for t in vms.values()), f"{spec.role} {need}: no node type of {vms}"


def test_the_fit_check_bites():
    srt = next(c for c in CONFIGS if c.name == "srt-cluster.yaml")
    learner = next(s for s in roles(srt, ["learner.memory_gb=64"]) if s.role == "learner")
    assert not any(fits(learner.demand(), g) for g in kuberay_groups().values())


def test_no_worker_group_is_left_unused():
    wanted = {k for c in CONFIGS for s in roles(c) for k in s.demand()}
    for name, resources in kuberay_groups().items():
        special = set(resources) - {"CPU", "memory"}        # GPU and custom resources
        assert special and special <= wanted, f"{name} offers {special}; the configs ask for {wanted}"


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_rayjob_runs_a_cluster_config_on_the_raycluster(path):
    (job,) = documents(path)
    assert job["kind"] == "RayJob"
    module, config = re.fullmatch(r"python -m jobs\.(\w+) (\S+) --run-dir /runs/\S+",
                                  job["spec"]["entrypoint"]).groups()
    assert (ROOT / config).is_file() and load_config(ROOT / config).job == module
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == raycluster()["metadata"]["name"]


# -- (4) the dashboard plots exported metrics ---------------------------------------------------------
def test_dashboard_plots_only_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "evoray" and dash["title"] == "evoray"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["targets"] and all('run=~"$run"' in t["expr"] for t in panel["targets"]), panel["title"]
    exprs = "\n".join(t["expr"] for p in panels for t in p["targets"])
    named = set(re.findall(r"evoray_[a-zA-Z0-9_]+", exprs))
    assert named and named <= EXPORTED, sorted(named - EXPORTED)
    # Ray exports application metrics as ray_<name>: a bare evoray_* series never exists
    assert not re.search(r"(?<!ray_)evoray_", exprs)
