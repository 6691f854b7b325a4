"""SRT's config: the prompt data, the reward (majority vote and its options), the mitigations,
evaluation, training and the answer graders; the shared sections come from ``services.config``."""
from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_validator

from services.config import (ActorResources, JobConfig, LearnerConfig, ModelConfig, SamplerConfig,
                             SamplingConfig, Strict)


def _question_template(value: Optional[str]) -> Optional[str]:
    """A prompt template: ``{question}`` is the only field; other braces are doubled (``{{}}``)."""
    if value is None:
        return None
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
    # a limit per split; None: every row of a file, and GENERATED_SIZES of a generated dataset
    n_train: Optional[int] = Field(None, ge=1)
    n_val: Optional[int] = Field(None, ge=0)
    n_heldout: Optional[int] = Field(None, ge=1)
    split_fractions: dict[str, float] = {"train": 0.6, "val": 0.1, "heldout": 0.3}
    _template = field_validator("template", check_fields=False)(_question_template)


GENERATED_SIZES = {"train": 64, "val": 16, "heldout": 32}
ARITHMETIC_TEMPLATE = "What is {question}? Answer with just the number."


class DataConfig(SplitsConfig):
    source: str = "arithmetic"            # "arithmetic" or a .parquet/.jsonl file
    level: int = 1
    template: Optional[str] = Field(None, description="the prompt around each question; None: "
                                    "ARITHMETIC_TEMPLATE for generated tasks, a file's prompts as written")


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


class AnswerGraderConfig(ActorResources):
    """SRT's answer grading (extraction + vote over model-written text) in sandboxed workers: the
    ``sandbox`` role. ``workers: 0`` grades in the driver's process."""
    workers: int = Field(0, ge=0)
    backend: Literal["auto", "docker", "bwrap"] = "auto"
    num_cpus: float = Field(0.25, ge=0)
    timeout_s: float = Field(30, gt=0, description="wall time of one batch's grading")
    memory_mb: int = Field(512, ge=32)


class SRTConfig(JobConfig):
    RESUMABLE_KEYS: ClassVar[tuple[str, ...]] = JobConfig.RESUMABLE_KEYS + (
        "train.steps", "train.checkpoint_every", "train.keep_checkpoints", "eval.every",
        "early_stopping.*", "collapse.stop", "collapse.enabled", "sampler.threads",
        # checkpoints are whole tensors under every strategy (actors/data_parallel.py)
        "learner.workers", "learner.strategy", "learner.zero_stage")
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
    sandbox: AnswerGraderConfig = AnswerGraderConfig()

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
