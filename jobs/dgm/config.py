"""DGM's config: the LLM gateway and its routes, the sandboxes, the tasks, the coding agent and
the outer loop."""
from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_validator

from services.config import EMBEDDED_MODEL, JobConfig, ModelConfig, SamplerConfig, Strict


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



class AgentSandboxConfig(Strict):
    """The sandboxes DGM's attempt workers (the ``sandbox`` role) run coding agents and hidden tests
    in: ``actors.sandbox`` containers (docker) or bubblewrap, and their limits."""
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


class DGMConfig(JobConfig):
    # the archive is what a DGM run resumes from; its budget and attempts may grow
    RESUME_FROM: ClassVar[tuple[str, ...]] = ("archive.parquet",)
    RESUMABLE_KEYS: ClassVar[tuple[str, ...]] = JobConfig.RESUMABLE_KEYS + (
        "loop.attempts", "loop.workers", "gateway.max_tokens", "gateway.max_cost_usd")
    job: Literal["dgm"] = "dgm"
    name: str = "dgm"
    model: ModelConfig = ModelConfig()          # the in-cluster model behind `sampler` routes
    sampler: SamplerConfig = SamplerConfig()
    gateway: GatewayConfig = GatewayConfig()
    sandbox: AgentSandboxConfig = AgentSandboxConfig()
    tasks: DGMTasksConfig = DGMTasksConfig()
    agent: DGMAgentConfig = DGMAgentConfig()
    loop: DGMLoopConfig = DGMLoopConfig()
