"""UI-Genie's config: the device pool, the tasks, the agent, the reward model, beam search and the
generations."""
from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_validator

from services.config import JobConfig, ModelConfig, RayTrainConfig, SamplerConfig, Strict


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
    seeds: Literal["suite", "generated"] = Field(
        "suite", description="suite: seed tasks are a split of the suite; generated: the templates "
        "with parameters the suite never uses (all of the suite is then exploration and held-out)")
    split_fractions: dict[str, float] = {"seed": 0.3, "explore": 0.4, "heldout": 0.3}
    n_seed: Optional[int] = Field(None, ge=1)
    n_explore: Optional[int] = Field(None, ge=1, description="exploration tasks a generation (None: all)")
    retire_solved: bool = Field(False, description="a task beam search has solved is not explored "
                                 "again; the next of the exploration split takes its place")
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
    replay: int = Field(1, ge=0, description="generations ≥ 1: earlier examples replayed per new one "
                        "(the agent keeps what it knew instead of copying the few new trajectories)")
    explore_epochs: Optional[int] = Field(None, ge=1, description="generations ≥ 1: passes over new + "
                                          "replayed examples (None: sft_epochs)")
    explore_lr: Optional[float] = Field(None, gt=0, description="generations ≥ 1: the SFT learning rate "
                                        "(None: lr); each SFT starts a fresh AdamW, whose first steps "
                                        "move every weight by about lr even where the loss is ~0")
    sft_batch: int = Field(2, ge=1, description="examples per optimizer step; small, because the "
                           "decisions (action kind, element) need many steps to be learned")
    decision_weight: float = Field(1.0, gt=0, description="weight of a reply's first token, the action "
                                   "kind, in the SFT loss (1: plain token-mean; actors/sft.py)")
    grad_clip: float = Field(1.0, gt=0)
    trainable_layers: Optional[int] = Field(10, ge=1, description="SFT only the top N layers (None: all)")
    micro_batch_tokens: int = Field(8192, ge=1, description="padded tokens per micro-batch (per worker)")
    verify_samples: int = Field(4, ge=0, description="agent proposals per reference step, labelled by rules")
    verify_steps: Optional[int] = Field(None, ge=0, description="verify proposals on at most this many "
                                        "seed reference steps, a random sample (None: all; the held-out "
                                        "RM set always has all of its own)")


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
    greedy: bool = Field(True, description="each beam's candidates also hold its greedy action, so "
                         "search starts from what greedy decoding would do")
    keep_greedy: bool = Field(False, description="one beam per task follows the greedy action at every "
                              "step even where the reward model ranks it out, so beam search solves "
                              "whatever greedy decoding solves (needs beam.greedy)")

    @model_validator(mode="after")
    def _keep_greedy_needs_greedy(self):
        if self.keep_greedy and not self.greedy:
            raise ValueError("beam.keep_greedy needs beam.greedy: true (the greedy action must be a candidate)")
        return self


class UIGenieLoopConfig(Strict):
    generations: int = Field(3, ge=0)
    eval_base: bool = Field(False, description="also evaluate the model before any training")
    seed: int = 0


class UIGenieConfig(JobConfig):
    RESUMABLE_KEYS: ClassVar[tuple[str, ...]] = JobConfig.RESUMABLE_KEYS + ("loop.generations", "train.*")
    job: Literal["uigenie"] = "uigenie"
    name: str = "uigenie"
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()
    devices: DevicePoolConfig = DevicePoolConfig()
    tasks: UIGenieTasksConfig = UIGenieTasksConfig()
    agent: UIGenieAgentConfig = UIGenieAgentConfig()
    reward_model: RewardModelConfig = RewardModelConfig()
    train: RayTrainConfig = Field(default_factory=RayTrainConfig, description="the agent's SFT and the "
                                  "reward model's head: Ray Train runs on these workers")
    beam: BeamConfig = BeamConfig()
    loop: UIGenieLoopConfig = UIGenieLoopConfig()
