"""Typed configs: YAML validated by pydantic. Unknown or misspelt keys are errors, never ignored.

The sections every loop shares live here (model, sampler, sampling, learner, ray); each loop's
config model lives in its own folder and is found through the job registry by the ``job:`` key."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from actors.learner_settings import LearnerSettings, UpdateRule


class ConfigError(ValueError):
    """A config that cannot run; the message names the file and the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


EMBEDDED_MODEL = "smollm2-135m-instruct"


class ModelConfig(Strict):
    name: str = EMBEDDED_MODEL   # embedded default, an HF directory, or a hub id


class ActorResources(Strict):
    """What one actor of a role asks the cluster for; the controller places it (services/placement.py)."""
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0)
    memory_gb: Optional[float] = Field(None, gt=0, description="reserved RAM per actor")
    resources: dict[str, float] = Field(default_factory=dict, description="custom, e.g. {sandbox: 1}")


class VLLMEngineArgs(Strict):
    """``sampler.engine_args``: vLLM engine settings (``sampler.backend: vllm``); unset = vLLM's default."""
    enforce_eager: Optional[bool] = Field(None, description="no CUDA graphs / torch.compile: the engine "
                                          "starts in 25–60 s instead of minutes (vLLM's default: False)")
    max_model_len: Optional[int] = Field(None, ge=16, description="prompt + completion tokens; default: the model's")
    max_num_seqs: Optional[int] = Field(None, ge=1, description="sequences decoded together")
    max_num_batched_tokens: Optional[int] = Field(None, ge=16, description="tokens in one engine step")
    enable_chunked_prefill: Optional[bool] = Field(None, description="split long prefills over steps; "
                                                   "on CPU default off (seeded sampling cannot run chunked there)")
    enable_prefix_caching: bool = True
    block_size: Optional[int] = Field(None, ge=1, description="KV cache block, in tokens (the unit "
                                      "of prefix caching); vLLM's default: 16 on GPUs, 128 on CPU")
    kv_cache_space_gb: Optional[int] = Field(None, ge=1, description="CPU only: the KV cache "
                                               "(VLLM_CPU_KVCACHE_SPACE); default 1 GiB")
    distributed_executor_backend: Optional[Literal["mp", "ray", "uni"]] = Field(
        None, description="tensor parallelism: worker processes (mp) or Ray actors (ray)")


class SamplerConfig(ActorResources):
    backend: Literal["transformers", "vllm"] = "transformers"
    num_actors: int = Field(1, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    threads: Optional[int] = Field(None, ge=1, description="torch threads; default: all cores. vLLM on "
                                   "a CPU: the engine's OpenMP threads, bound to that many cores with none "
                                   "held back (default: vLLM's binding, which keeps one core for its scheduler)")
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    system_prompt: Optional[str] = None
    static_cache: bool = Field(False, description="transformers backend: Hugging Face generate with a "
                               "static KV cache (compiled into CUDA graphs on a GPU)")
    batch_tokens: Optional[int] = Field(None, ge=1, description="transformers backend: prompts of "
                                        "similar length are sampled together, at most this many "
                                        "padded prompt tokens (prompts × longest) per batch; default: "
                                        "all in one")
    engine_args: VLLMEngineArgs = Field(default_factory=VLLMEngineArgs,
                                        description="vllm backend: engine settings")
    start_timeout_s: Optional[float] = Field(None, gt=0, description="wait this long for a sampler "
                                             "(and a restarted one) to start; default: 600 s for vllm "
                                             "(an engine loads, profiles, compiles), else ray.placement_timeout_s")


class SamplingConfig(Strict):
    n: int = Field(8, ge=1, description="samples per prompt")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(12, ge=1)


class LearnerConfig(ActorResources, UpdateRule):
    """The learner role: its update rule (``actors.learner.UpdateRule``) and where it runs."""
    workers: int = Field(1, ge=1, description="data-parallel learner actors (one GPU each): the "
                         "batch is split by prompt groups and the gradients summed")
    weight_sync: Literal["auto", "object_store", "broadcast", "ipc"] = Field(
        "auto", description="learner → samplers: broadcast in buckets over NCCL/gloo, CUDA IPC to samplers "
        "on the learner's GPU, or the Ray object store; auto: between GPUs, broadcast when not "
        "colocated and ipc when colocated")
    sync_bucket_mb: float = Field(256, gt=0, description="broadcast bucket size")

    @model_validator(mode="after")
    def _strategy_needs_ranks(self) -> "LearnerConfig":
        if self.strategy != "ddp" and self.workers == 1:
            raise ValueError(f"learner.strategy: {self.strategy} shards across ranks and needs "
                             "learner.workers > 1 (one worker takes the plain single-process step)")
        return self

    def settings(self, model: str, sync_dtype: str | None = None, seed: int = 0) -> LearnerSettings:
        """One learner actor's settings: this section's update rule, on its device."""
        return LearnerSettings(model=model, device="cuda" if self.num_gpus > 0 else "cpu",
                               sync_dtype=sync_dtype, seed=seed,
                               **self.model_dump(include=set(UpdateRule.model_fields)))


class RayTrainConfig(Strict):
    """Run-to-completion training as Ray Train runs (``services/ray_train.py``): one
    ``TorchTrainer`` per training, its workers data-parallel."""
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks) per training run")
    use_gpu: bool = Field(False, description="one GPU per worker (NCCL); else CPUs (gloo)")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per worker")
    resources: dict[str, float] = Field(default_factory=dict, description="custom resources per worker")
    max_failures: int = Field(1, ge=-1, description="a failed worker group is restarted this often "
                              "(from the run's last checkpoint); -1: without limit")
    keep_checkpoints: int = Field(1, ge=1, description="checkpoints each run keeps in RUN_DIR/ray_train")


class RayConfig(Strict):
    address: Optional[str] = None               # default: RAY_ADDRESS, else a local instance
    num_cpus: Optional[int] = Field(None, ge=1, description="local instance only")
    include_dashboard: Optional[bool] = None    # None: Ray decides (on when ray[default] is installed)
    dashboard_host: str = "127.0.0.1"           # local instance only; 0.0.0.0 exposes it
    namespace: str = "evoray"                   # actors are named RUN:ROLE-I inside it
    placement: Literal["disaggregated", "colocated"] = Field(
        "disaggregated", description="colocated: the learner shares the first sampler's bundle (GPU)")
    placement_timeout_s: float = Field(60, gt=0, description="wait this long for resources in use")
    autoscaling: bool = Field(False, description="a request no node can hold asks the autoscaler "
                              "instead of failing at once")
    max_restarts: int = Field(3, ge=0, description="restarts of a sampler or sandbox actor")
    max_retries: int = Field(3, ge=0, description="a lost piece of work is re-issued this often")


TRACKERS = ("tensorboard", "wandb", "mlflow")


class JobConfig(Strict):
    """What every loop's config has: its job name (the registry key), a run name, the Ray section
    and the experiment trackers; a loop's config model extends it with ``job: Literal["its name"]``.

    ``RESUMABLE_KEYS``: what ``evoray resume --set`` may change (fnmatch patterns) — keys that do not
    change what the checkpoints mean. ``RESUME_FROM``: files in the run directory that a resume
    starts from; a run directory with none of them is a start that failed and can be reused."""
    RESUMABLE_KEYS: ClassVar[tuple[str, ...]] = ("ray.*", "tracking")
    RESUME_FROM: ClassVar[tuple[str, ...]] = ("checkpoints/latest",)
    job: str
    name: str
    ray: RayConfig = RayConfig()
    tracking: list[Literal[TRACKERS]] = Field(
        default_factory=list, description="experiment trackers fed with metrics.parquet's metrics: "
        "tensorboard (RUN_DIR/tensorboard), wandb (offline unless WANDB_MODE says otherwise), "
        "mlflow (a file store at RUN_DIR/mlruns unless MLFLOW_TRACKING_URI is set)")

    @field_validator("tracking", mode="before")
    @classmethod
    def _one_tracker(cls, value):
        """``--set tracking=tensorboard`` means ``[tensorboard]``; ``none`` or null means none."""
        if value is None or value == "none":
            return []
        return [value] if isinstance(value, str) else value


def apply_override(raw: dict, assignment: str) -> None:
    """Apply ``key.path=value`` (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    key, value = assignment.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {assignment}: the value is not valid YAML "
                          f"({getattr(e, 'problem', None) or type(e).__name__})") from None


def format_errors(err: ValidationError, source: str) -> str:
    """One line: ``invalid config SOURCE: key: problem; key: problem``."""
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key (not part of the config; check its spelling)" if e["type"] == "extra_forbidden" else e["msg"]
        problems.append(f"{key}: {' '.join(str(msg).split())}")
    return f"invalid config {source}: " + "; ".join(problems)


def parse_config(raw: dict, source: str = "<config>"):
    from services.registry import DEFAULT_JOB, job_names, lookup
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    name = raw.get("job", DEFAULT_JOB)
    job = lookup(name) if isinstance(name, str) else None
    if job is None:
        raise ConfigError(f"{source}: job: {name!r} is not one of {job_names()}")
    try:
        return job.config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> Any:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give a YAML file "
                          f"(a run directory's is {path / 'config.yaml'})")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text file") from None
    except PermissionError:
        raise ConfigError(f"config file {path} cannot be read (permission denied)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for assignment in overrides:
        apply_override(raw, assignment)
    return parse_config(raw, str(path))


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def check_resumable(config_class, overrides: list[str]) -> None:
    """Refuse, by name, a ``resume --set`` of a key the run's checkpoints depend on."""
    import fnmatch
    allowed = config_class.RESUMABLE_KEYS
    for assignment in overrides:
        key = assignment.split("=", 1)[0].strip()
        if not any(fnmatch.fnmatchcase(key, pattern) for pattern in allowed):
            raise ConfigError(f"resume --set {key}: cannot change when resuming (the run's checkpoints "
                              f"depend on it); resume accepts: {', '.join(allowed)}")
