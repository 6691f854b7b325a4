"""Typed configs: YAML validated by pydantic. Unknown or misspelt keys are errors, never ignored."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config that cannot run; the message names the file and the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    name: str = "smollm2-135m-instruct"   # embedded default, an HF directory, or a hub id


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
    threads: Optional[int] = Field(None, ge=1, description="torch threads; default: all cores")
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    system_prompt: Optional[str] = None
    static_cache: bool = Field(False, description="transformers backend: Hugging Face generate with a "
                               "static KV cache (compiled into CUDA graphs on a GPU)")
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


class LearnerConfig(ActorResources):
    lr: float = Field(3e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0)
    advantage: str = "grpo"
    policy_loss: str = "ppo_clip"
    clip_low: float = 0.2
    clip_high: float = 0.28
    aggregation: str = "token-mean"
    kl_coef: float = Field(0.0, ge=0)
    kl_estimator: str = "low_var_kl"
    micro_batch_tokens: int = Field(4096, ge=1)
    autocast: Literal["none", "bf16"] = "none"
    tis_cap: Optional[float] = Field(None, gt=1, description="truncated importance sampling cap for "
                                     "samples of an older policy; train.mode async sets 2 if unset")
    threads: Optional[int] = Field(None, ge=1)
    workers: int = Field(1, ge=1, description="data-parallel learner actors (one GPU each): the "
                         "batch is split by prompt groups and the gradients summed")
    gradient_checkpointing: bool = False
    shard_optimizer: bool = Field(False, description="learner.workers > 1: ZeRO-1, each rank keeps "
                                  "the optimizer state of its share of the parameters")
    shard_weights: bool = Field(False, description="learner.workers > 1: FSDP2, each rank keeps 1/N "
                                "of every parameter, its gradient and its optimizer state")
    weight_sync: Literal["auto", "object_store", "broadcast", "ipc"] = Field(
        "auto", description="learner → samplers: broadcast in buckets over NCCL/gloo, CUDA IPC to samplers "
        "on the learner's GPU, or the Ray object store; auto: between GPUs, broadcast when not "
        "colocated and ipc when colocated")
    sync_bucket_mb: float = Field(256, gt=0, description="broadcast bucket size")

    @model_validator(mode="after")
    def _one_sharding(self) -> "LearnerConfig":
        if self.shard_weights and self.shard_optimizer:
            raise ValueError("learner.shard_weights already shards the optimizer state; "
                             "drop learner.shard_optimizer")
        return self

    @field_validator("advantage", "policy_loss", "kl_estimator", "aggregation")
    @classmethod
    def _registered(cls, value: str, info) -> str:
        from actors import grpo
        table = {"advantage": grpo.ADVANTAGE_ESTIMATORS, "policy_loss": grpo.POLICY_LOSSES,
                 "kl_estimator": grpo.KL_ESTIMATORS, "aggregation": grpo.AGGREGATIONS}[info.field_name]
        if value not in table:
            raise ValueError(f"{value!r} is not registered; choose one of {sorted(table)}")
        return value


def _question_template(value: str) -> str:
    """A prompt template: ``{question}`` is the only field; other braces are doubled (``{{}}``)."""
    try:
        value.format(question="")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{value!r} is not a template with one field {{question}} "
                         f"(write a literal brace as {{{{ or }}}}): {e!r}") from None
    if "{question}" not in value.replace("{{", "").replace("}}", ""):
        raise ValueError(f"{value!r} has no {{question}} field")
    return value


class SplitsConfig(Strict):
    """What every prompt dataset has: its splits (generated, or files) and the prompt template."""
    heldout_source: Optional[str] = None  # for file datasets: a labelled held-out file
    val_source: Optional[str] = None
    n_train: int = Field(64, ge=1)
    n_val: int = Field(16, ge=0)
    n_heldout: int = Field(32, ge=1)
    split_fractions: dict[str, float] = {"train": 0.6, "val": 0.1, "heldout": 0.3}
    _template = field_validator("template", check_fields=False)(_question_template)


class DataConfig(SplitsConfig):
    source: str = "arithmetic"            # "arithmetic" or a .parquet/.jsonl file
    level: int = 1
    template: str = "What is {question}? Answer with just the number."


class RewardConfig(Strict):
    kind: Literal["majority_vote", "ground_truth", "offline_labels"] = "majority_vote"
    extraction: Literal["boxed", "last_number", "boxed_or_last_number"] = "boxed_or_last_number"
    require_finished: bool = True
    equivalence: Literal["exact", "math"] = "exact"
    soft: bool = False
    self_consistency_threshold: float = Field(0.0, ge=0, le=1)
    offline_rollouts: int = Field(16, ge=1, description="K base-model samples per prompt")


class CurriculumConfig(Strict):
    mode: Literal["none", "offline", "in_batch"] = "none"
    keep_fraction: float = Field(1 / 3, gt=0, le=1)
    rollouts: int = Field(16, ge=1, description="K base-model samples per prompt (offline mode)")


class EarlyStoppingConfig(Strict):
    enabled: bool = False
    metric: str = "val/pass@1"
    patience: int = Field(3, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = 0.0


class CollapseConfig(Strict):
    enabled: bool = True
    window: int = Field(5, ge=2, description="steps over which the pseudo-reward rise is measured")
    reward_rise: float = 0.15
    dominance: float = Field(0.5, gt=0, le=1, description="share of prompts with one same majority answer")
    echo: float = Field(0.75, gt=0, le=1, description="share of prompts whose majority answer is copied from the prompt")
    heldout_drop: float = Field(0.15, gt=0)
    stop: bool = False


class EvalConfig(Strict):
    every: int = Field(10, ge=1)
    n: int = Field(8, ge=1)
    temperature: float = 1.0


class TrainConfig(Strict):
    steps: int = Field(40, ge=1)
    prompts_per_step: int = Field(16, ge=1)
    seed: int = 0
    checkpoint_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    skip_uniform_groups: bool = True
    mode: Literal["sync", "async"] = Field("sync", description="async: step k+1's samples are "
                                           "generated while step k trains")
    max_staleness: int = Field(1, ge=1, description="async: policy versions a sample may lag behind")


class RayConfig(Strict):
    address: Optional[str] = None               # default: RAY_ADDRESS, else a local instance
    num_cpus: Optional[int] = None              # local instance only
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


class GraderConfig(ActorResources):
    """SRT's answer grading (extraction + vote over model-written text) in sandboxed workers: the
    ``sandbox`` role. ``workers: 0`` grades in the driver's process."""
    workers: int = Field(0, ge=0)
    backend: Literal["auto", "docker", "bwrap"] = "auto"
    num_cpus: float = Field(0.25, ge=0)
    timeout_s: float = Field(30, gt=0, description="wall time of one batch's grading")
    memory_mb: int = Field(512, ge=32)


class SRTConfig(Strict):
    job: Literal["srt"] = "srt"
    name: str = "srt"
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()
    sampling: SamplingConfig = SamplingConfig()
    learner: LearnerConfig = LearnerConfig()
    data: DataConfig = DataConfig()
    reward: RewardConfig = RewardConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    collapse: CollapseConfig = CollapseConfig()
    eval: EvalConfig = EvalConfig()
    train: TrainConfig = TrainConfig()
    sandbox: GraderConfig = GraderConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _async_corrects_staleness(self) -> "SRTConfig":
        if self.train.mode == "async" and self.learner.tis_cap is None:
            self.learner.tis_cap = 2.0
        if self.ray.placement == "colocated" and self.learner.weight_sync == "broadcast" and self.learner.num_gpus:
            raise ValueError("learner.weight_sync: broadcast cannot run between two processes on one GPU "
                             "(ray.placement: colocated); use auto or object_store")
        if self.learner.weight_sync == "ipc" and not (self.ray.placement == "colocated" and self.learner.num_gpus):
            raise ValueError("learner.weight_sync: ipc shares the learner's GPU memory with the samplers on "
                             "that GPU: it needs ray.placement: colocated and learner.num_gpus > 0")
        if self.ray.placement == "colocated" and self.learner.workers > 1:
            raise ValueError("ray.placement: colocated shares the first sampler's GPU with one learner; "
                             "learner.workers > 1 needs placement: disaggregated")
        return self

# --------------------------------------------------------------------------------------------
# MM-UPT: SRT's loop on image questions, plus questions the model writes itself
# --------------------------------------------------------------------------------------------

class MMUPTDataConfig(SplitsConfig):
    source: str = "shapes"                # "shapes" (generated counting questions) or a .parquet file
    template: str = "{question} Answer with just the number."
    image_size: int = Field(96, ge=16, description="shapes: image side in pixels")


class SynthesisConfig(Strict):
    """Questions the model writes about the training images (jobs/mmupt/synthesis.py)."""
    modes: list[Literal["in_context", "direct"]] = Field(default_factory=list,
                                                         description="empty: no synthetic questions")
    per_image: int = Field(2, ge=1, description="candidates per image and mode")
    images: Optional[int] = Field(None, ge=1, description="training images to write for; default all")
    temperature: float = Field(1.0, ge=0)
    max_new_tokens: int = Field(40, ge=4)
    seed_answers: Literal["vote", "label"] = Field("vote", description="in-context: the original "
                                                   "question's answer by the model's majority vote, or the dataset's label")
    check_samples: int = Field(8, ge=1, description="answers sampled per candidate to judge it answerable")
    min_share: float = Field(0.5, gt=0, le=1, description="majority share a candidate needs")
    max_similarity: float = Field(0.8, gt=0, le=1, description="word overlap (Jaccard) that makes a duplicate")
    train_on: Literal["original", "synthetic", "both"] = "both"

    @model_validator(mode="after")
    def _synthetic_needs_modes(self) -> "SynthesisConfig":
        if self.train_on == "synthetic" and not self.modes:
            raise ValueError("train_on: synthetic needs at least one of modes: [in_context, direct]")
        return self


class MMUPTConfig(SRTConfig):
    job: Literal["mmupt"] = "mmupt"
    name: str = "mmupt"
    model: ModelConfig = ModelConfig(name="smollm2-135m-llava")
    data: MMUPTDataConfig = MMUPTDataConfig()
    synthesis: SynthesisConfig = SynthesisConfig()


# --------------------------------------------------------------------------------------------
# The LLM gateway (services/gateway.py) and the DGM job
# --------------------------------------------------------------------------------------------

EMBEDDED_MODEL = "smollm2-135m-instruct"


class ModelRoute(Strict):
    name: str                                   # the model name clients ask for
    backend: Literal["sampler", "openai", "replay"]
    model: Optional[str] = None                 # upstream id (openai) or local model (sampler)
    base_url: str = "https://api.openai.com/v1"
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    replies: Optional[str] = None               # replay: YAML/JSON list of {match, reply, times}
    input_usd_per_mtok: float = Field(0, ge=0)
    output_usd_per_mtok: float = Field(0, ge=0)
    max_new_tokens_cap: int = Field(1024, ge=1)
    optional: bool = Field(False, description="openai: without its key in the environment, the "
                           "route is left out instead of being an error")
    max_batch: int = Field(8, ge=1, description="sampler: concurrent requests generated together")
    batch_window_s: float = Field(0.05, ge=0, description="sampler: wait this long for company")

    @model_validator(mode="after")
    def _replay_needs_replies(self) -> "ModelRoute":
        if self.backend == "replay" and not self.replies:
            raise ValueError(f"route {self.name!r}: backend 'replay' needs replies: PATH")
        return self


class GatewayConfig(Strict):
    routes: list[ModelRoute] = Field(
        default_factory=lambda: [ModelRoute(name=EMBEDDED_MODEL, backend="sampler")], min_length=1)
    default_model: Optional[str] = None         # for requests naming no model; default: first route
    max_tokens: Optional[int] = Field(None, ge=0, description="per-run budget, prompt + completion")
    max_cost_usd: Optional[float] = Field(None, ge=0, description="per-run budget")
    tcp_host: str = "127.0.0.1"   # 0.0.0.0 on a multi-node cluster: workers' relays connect here
    tcp_port: int = Field(0, ge=0, le=65535, description="0: any free port")
    request_timeout_s: float = Field(300, gt=0)

    @model_validator(mode="after")
    def _names(self) -> "GatewayConfig":
        names = [r.name for r in self.routes]
        if repeated := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"route names must be unique; repeated: {repeated}")
        if self.default_model is not None and self.default_model not in names:
            raise ValueError(f"default_model {self.default_model!r} is not a route; routes: {names}")
        return self



class SandboxConfig(Strict):
    backend: Literal["auto", "docker", "bwrap"] = "auto"
    image: Optional[str] = None         # docker: an image of your own (e.g. a SWE-bench env image)
    pool_size: int = Field(2, ge=1, description="containers (and parallel tasks) per worker")
    agent_timeout_s: float = Field(120, gt=0, description="wall time of one agent run on one task")
    test_timeout_s: float = Field(20, gt=0, description="wall time of one task's hidden tests")
    memory_mb: int = Field(512, ge=32)
    pids: int = Field(64, ge=4)
    cpus: float = Field(1.0, gt=0)
    disk_mb: int = Field(64, ge=1)
    resources: dict[str, float] = Field(default_factory=dict, description="per worker, e.g. {sandbox: 1}")


class DGMTasksConfig(Strict):
    benchmark: Literal["humaneval", "repo"] = "humaneval"
    ids: Optional[list[str]] = None     # HumanEval ids (e.g. "HumanEval/53") or repo task ids
    path: Optional[str] = None          # repo: the tasks' JSONL file
    stage1: int = Field(10, ge=1, description="tasks every child is evaluated on first")
    stage2: int = Field(50, ge=0, description="more tasks, only for a child past the threshold")
    threshold: float = Field(0.4, ge=0, le=1, description="stage-1 score needed for stage 2")
    shuffle_seed: Optional[int] = 0     # None: the tasks in file order

    @model_validator(mode="after")
    def _repo_needs_path(self) -> "DGMTasksConfig":
        if self.benchmark == "repo" and not self.path:
            raise ValueError("benchmark 'repo' needs path: TASKS.jsonl")
        return self


class DGMAgentConfig(Strict):
    model: Optional[str] = None         # gateway route the coding agent uses; default: gateway's
    max_steps: int = Field(3, ge=1)
    max_tokens: int = Field(384, ge=1)
    temperature: float = Field(0.0, ge=0)
    seed_dir: Optional[str] = None      # the initial agent's code; default: jobs/dgm/seed_agent


class DGMLoopConfig(Strict):
    attempts: int = Field(80 * 2, ge=0, description="self-improvement attempts in all")
    workers: int = Field(2, ge=1, description="attempts running at once")
    mode: Literal["async", "generation"] = "async"
    attempts_per_generation: int = Field(2, ge=1)
    selection: str = "score_child_prop"
    selection_lambda: float = 10.0
    selection_alpha0: float = 0.5
    diagnosis_model: Optional[str] = None   # the model that reads logs and proposes a change
    diagnosis_max_tokens: int = Field(512, ge=1)
    worker_num_cpus: float = Field(0.5, ge=0)
    seed: int = 0

    @field_validator("selection")
    @classmethod
    def _known_selection(cls, v: str) -> str:
        from jobs.dgm.selection import PARENT_SELECTION
        if v not in PARENT_SELECTION:
            raise ValueError(f"unknown parent selection {v!r}; known: {sorted(PARENT_SELECTION)}")
        return v


class DGMConfig(Strict):
    job: Literal["dgm"] = "dgm"
    name: str = "dgm"
    model: ModelConfig = ModelConfig()          # the in-cluster model behind `sampler` routes
    sampler: SamplerConfig = SamplerConfig()
    gateway: GatewayConfig = GatewayConfig()
    sandbox: SandboxConfig = SandboxConfig()
    tasks: DGMTasksConfig = DGMTasksConfig()
    agent: DGMAgentConfig = DGMAgentConfig()
    loop: DGMLoopConfig = DGMLoopConfig()
    ray: RayConfig = RayConfig()


# --------------------------------------------------------------------------------------------
# UI-Genie: the device pool, the agent, the reward model, beam search, generations
# --------------------------------------------------------------------------------------------

class DevicePoolConfig(Strict):
    backend: str = Field("simulated", description="simulated, adb, or module:Class of your own")
    size: int = Field(2, ge=1, description="devices in the pool (and device operations at once)")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to the device class")
    resources: dict[str, float] = Field(default_factory=dict, description="per device actor, e.g. {kvm: 1}")
    num_cpus: float = Field(0.05, ge=0)
    lease_ttl_s: float = Field(60, gt=0)
    health_interval_s: float = Field(10, gt=0)
    max_failures: int = Field(3, ge=1, description="failed restarts in a row before a device is replaced")
    retries: int = Field(2, ge=0, description="a device operation that hit a crash is retried this often")


class UIGenieTasksConfig(Strict):
    suite: Literal["simulated"] = "simulated"
    seed_levels: list[int] = Field([1, 2], description="levels whose seed tasks come with references")
    split_fractions: dict[str, float] = {"seed": 0.3, "explore": 0.4, "heldout": 0.3}
    n_seed: Optional[int] = Field(None, ge=1)
    n_explore: Optional[int] = Field(None, ge=1)
    n_heldout: Optional[int] = Field(None, ge=1)
    max_steps: int = Field(8, ge=1)

    @field_validator("split_fractions")
    @classmethod
    def _splits(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != {"seed", "explore", "heldout"} or any(x <= 0 for x in v.values()):
            raise ValueError("needs positive fractions for exactly seed, explore and heldout")
        return v


class UIGenieAgentConfig(Strict):
    max_new_tokens: int = Field(32, ge=4)
    lr: float = Field(1e-4, gt=0)
    sft_epochs: int = Field(3, ge=1, description="passes over each generation's SFT set")
    sft_batch: int = Field(8, ge=1, description="examples per optimizer step")
    grad_clip: float = Field(1.0, gt=0)
    trainable_layers: Optional[int] = Field(10, ge=1, description="SFT only the top N layers (None: all)")
    micro_batch_tokens: int = Field(8192, ge=1)
    verify_samples: int = Field(4, ge=0, description="agent proposals per reference step, labelled by rules")
    num_cpus: float = 0.5


class RewardModelConfig(Strict):
    model: Optional[str] = None            # the frozen backbone; default: model.name
    head_hidden: int = Field(256, ge=0)
    lr: float = Field(1e-3, gt=0)
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(64, ge=1)
    max_tokens: int = Field(256, ge=16)
    max_screen_chars: int = Field(160, ge=0, description="the screen's first lines (title, top items)")
    threshold: float = Field(0.5, gt=0, lt=1)
    corruptions: int = Field(3, ge=0, description="corrupted copies of each successful trajectory")
    hard_negative_repeat: int = Field(2, ge=1, description="a hard negative counts this many times")
    num_cpus: float = 0.25


class BeamConfig(Strict):
    width: int = Field(2, ge=1, description="beams kept per task")
    expansions: int = Field(3, ge=1, description="actions sampled per beam and step")
    temperature: float = Field(0.8, gt=0)


class UIGenieLoopConfig(Strict):
    generations: int = Field(3, ge=0)
    eval_base: bool = Field(False, description="also evaluate the model before any training")
    seed: int = 0


class UIGenieConfig(Strict):
    job: Literal["uigenie"] = "uigenie"
    name: str = "uigenie"
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()
    devices: DevicePoolConfig = DevicePoolConfig()
    tasks: UIGenieTasksConfig = UIGenieTasksConfig()
    agent: UIGenieAgentConfig = UIGenieAgentConfig()
    reward_model: RewardModelConfig = RewardModelConfig()
    beam: BeamConfig = BeamConfig()
    loop: UIGenieLoopConfig = UIGenieLoopConfig()
    ray: RayConfig = RayConfig()


JOBS: dict[str, type[Strict]] = {"srt": SRTConfig, "mmupt": MMUPTConfig, "dgm": DGMConfig,
                                 "uigenie": UIGenieConfig}


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
    node[parts[-1]] = yaml.safe_load(value)


def format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key (not part of the config; check its spelling)" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_config(raw: dict, source: str = "<config>"):
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    job = raw.get("job", "srt")
    if job not in JOBS:
        raise ConfigError(f"{source}: job: {job!r} is not one of {sorted(JOBS)}")
    try:
        return JOBS[job].model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
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
