"""What a Learner is built with, light enough for config parsing (no torch at import)."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class LoraSettings(BaseModel):
    """Low-rank adapters (PEFT's LoRA): W + (alpha/rank)·B·A on the target linear layers; only A
    and B train, the samplers get the merged W."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    target_modules: Union[Literal["all-linear"], list[str]] = Field(
        "all-linear", description="module names (e.g. [q_proj, v_proj]) or every linear layer but the output")
    dropout: float = Field(0.0, ge=0, lt=1)


REPLACED = {"shard_weights": "learner.strategy: fsdp2",
            "shard_optimizer": "learner.strategy: deepspeed with learner.zero_stage: 1"}


class UpdateRule(BaseModel):
    """How the learner updates the policy: the ``learner:`` config section's algorithm keys (the
    config adds where the learner runs). Every default is defined here, once."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    lr: float = Field(3e-6, ge=0, description="0 keeps the policy fixed (log-probs and metrics only)")
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
    ppo_epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    mini_batches: int = Field(1, ge=1, description="optimizer steps per pass: the rollout batch cut "
                              "into this many runs of whole prompt groups")
    old_logprobs: Literal["recompute", "sampler"] = Field(
        "recompute", description="π_old of the PPO ratio: the learner's log-probs before the "
        "rollout's first step, or the sampler's")
    micro_batch_tokens: int = Field(4096, ge=1)
    autocast: Literal["none", "bf16"] = "none"
    tis_cap: Optional[float] = Field(None, gt=1, description="truncated importance sampling cap for "
                                     "samples of an older policy; train.mode async sets 2 if unset")
    threads: Optional[int] = Field(None, ge=1)
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: memory for time")
    strategy: Literal["ddp", "fsdp2", "deepspeed"] = Field(
        "ddp", description="learner.workers > 1: how the ranks hold the model — ddp: whole on every "
        "rank, gradients all-reduced; fsdp2: each rank keeps 1/N of every parameter, gradient and "
        "Adam state; deepspeed: ZeRO of learner.zero_stage")
    zero_stage: Optional[Literal[1, 2, 3]] = Field(
        None, description="strategy deepspeed: 1 shards the Adam state, 2 also the gradients, 3 also "
        "the weights; default 2")
    lora: Optional[LoraSettings] = Field(None, description="train low-rank adapters instead of the weights")

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, data):
        """The booleans ``strategy`` replaced: a config naming them says what to write instead."""
        if isinstance(data, dict):
            for key, instead in REPLACED.items():
                if key in data:
                    raise ValueError(f"learner.{key} was replaced by {instead}")
            if data.get("strategy") == "deepspeed" and data.get("zero_stage") is None:
                data = {**data, "zero_stage": 2}
        return data

    @model_validator(mode="after")
    def _strategy_fits(self) -> "UpdateRule":
        if self.zero_stage is not None and self.strategy != "deepspeed":
            raise ValueError(f"learner.zero_stage is DeepSpeed's; learner.strategy is {self.strategy} "
                             "(set learner.strategy: deepspeed, or drop zero_stage)")
        if self.strategy == "deepspeed" and self.lora is not None:
            raise ValueError("learner.lora trains with learner.strategy ddp or fsdp2, not deepspeed")
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


class LearnerSettings(UpdateRule):
    """What one Learner actor is built with: the update rule, the model and where it runs."""
    model: str
    device: str = "cpu"
    sync_dtype: Optional[str] = None     # cast weights for the samplers (e.g. bfloat16 for vLLM)
    seed: int = 0
    trainable_layers: Optional[int] = None   # train only the top N decoder layers (+ final norm)

    @model_validator(mode="after")
    def _adapters_or_layers(self) -> "LearnerSettings":
        if self.lora is not None and self.trainable_layers is not None:
            raise ValueError("learner.lora trains adapters only; drop trainable_layers")
        return self

    def __init__(self, model: str | None = None, /, **fields):
        super().__init__(**fields, **({"model": model} if model is not None else {}))
