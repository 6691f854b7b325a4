"""MM-UPT's config: SRT's, on image questions, plus the questions the model writes itself."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from jobs.srt.config import SplitsConfig, SRTConfig
from services.config import ModelConfig, Strict


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
