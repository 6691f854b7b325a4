"""UI-Genie-RM on CPU: a frozen small LM as feature extractor and a trained binary head.

The paper's RM is a 7B VLM fine-tuned to emit a positive/negative token for (goal, previous steps,
current screen, candidate action). Here the backbone stays frozen and the features are

    [ h_last(prompt) ; g ; a ; g ⊙ a ]      g = mean_t h(goal), a = mean_t h(action)

h_last is the final-layer hidden state at the prompt's last token (the whole context); g and a
are the goal and the action encoded on their own and mean-pooled, and their product gives a
linear head a direct goal–action match signal, which a last-token state alone carries poorly when
the labelled set is small. Everything is cached by text hash (a candidate scored twice, or an old
example retrained on later, costs nothing; goals repeat across all of a task's candidates). A
small head (standardise → MLP or linear → logit) is trained with BCE. reward = sigmoid(logit) ∈ [0, 1];
the task-level reward is the score of the "task complete" action (terminate success).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence, Union

import torch
from torch import nn

from actors.generation import left_pad, token_batches

MAX_HISTORY = 5          # earlier screens the RM sees (the paper: up to 5)


def f1(preds: Sequence[int], labels: Sequence[int]) -> float:
    """F1 of the positive class: 2·TP / (2·TP + FP + FN); 0.0 when there is no TP (as sklearn)."""
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions but {len(labels)} labels")
    tp = sum(1 for p, y in zip(preds, labels) if p == 1 and y == 1)
    fp = sum(1 for p, y in zip(preds, labels) if p == 1 and y != 1)
    fn = sum(1 for p, y in zip(preds, labels) if p != 1 and y == 1)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0



QUESTION = "Question: Is this action correct for the goal? Answer yes or no."
FEATURE_SETTINGS = ("model", "max_tokens", "max_screen_chars")   # change the features, not the head
HEAD_FILE, META_FILE = "head.safetensors", "reward_model.json"


@dataclass
class RMInput:
    """One RM query: the goal, earlier actions as text (oldest first; the last 5 are used), a text
    rendering of the current screen, and the candidate action as text."""
    goal: str
    history: list[str] = field(default_factory=list)
    screen: str = ""
    action: str = ""


@dataclass
class RewardModelSettings:
    model: str = "smollm2-135m-instruct"
    head_hidden: int = 256                 # 0: a linear head
    lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 30
    batch_size: int = 64
    max_tokens: int = 512                  # prompts keep their last max_tokens tokens
    max_screen_chars: int = 800            # UI listings run ~2.4 chars/token: ≤ ~340 tokens, so the
                                           # goal, history and action still fit in max_tokens
    threads: int | None = None             # torch.set_num_threads; None: every core
    seed: int = 0
    pos_weight: Union[str, float] = "balanced"   # "balanced" = n_neg / n_pos, or a fixed float
    feature_batch_tokens: int = 8192       # padded tokens (rows × longest) per backbone forward


def format_rm_prompt(x: RMInput, max_screen_chars: int) -> str:
    """The one text layout of an RM query. Features are read at the last token, so the candidate
    action and the question come last; the screen is cut to ``max_screen_chars`` (marked "...")."""
    recent = x.history[-MAX_HISTORY:]
    steps = [f"{i}. {h}" for i, h in enumerate(recent, 1)] or ["(none)"]
    screen = x.screen if len(x.screen) <= max_screen_chars else x.screen[:max_screen_chars] + " ..."
    return "\n".join([f"Goal: {x.goal}", "Previous actions:", *steps, "Current screen:", screen,
                      f"Candidate action: {x.action}", QUESTION])


def balanced_pos_weight(n_pos: int, n_neg: int) -> float:
    """BCE positive-class weight n_neg / n_pos, so both classes carry equal total weight;
    1.0 when either class is absent (nothing to balance)."""
    return n_neg / n_pos if n_pos and n_neg else 1.0


def resolve_pos_weight(setting: Union[str, float], n_pos: int, n_neg: int) -> float:
    if setting == "balanced":
        return balanced_pos_weight(n_pos, n_neg)
    if isinstance(setting, str):
        raise ValueError(f"pos_weight must be 'balanced' or a number, got {setting!r}")
    return float(setting)


def truncate_left(ids: list[int], max_tokens: int, bos_id: int | None) -> list[int]:
    """Keep the last ``max_tokens`` ids (the end holds the action and question); a leading BOS
    is kept in front of the tail when the tokenizer added one."""
    if len(ids) <= max_tokens:
        return ids
    if bos_id is not None and ids[0] == bos_id:
        return [bos_id] + ids[len(ids) - max_tokens + 1:]
    return ids[len(ids) - max_tokens:]


class Head(nn.Module):
    """logit = net((x − mean) / std); mean/std are the training set's, stored as buffers."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.net = (nn.Linear(dim, 1) if hidden == 0 else
                    nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1)))

    def set_normaliser(self, x: torch.Tensor) -> None:
        """Population mean/std per feature; a constant feature gets std 1 (not a blow-up)."""
        std = x.std(dim=0, unbiased=False)
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(-1)


class RewardModel:
    """Frozen backbone + trainable head; see the module docstring."""

    def __init__(self, settings: RewardModelSettings | None = None):
        from actors.model_loading import load_causal_lm, use_threads

        self.settings = settings or RewardModelSettings()
        use_threads(self.settings.threads)
        self.backbone, self.tokenizer = load_causal_lm(self.settings.model)
        self.backbone.requires_grad_(False).eval()
        self.encoder = self.backbone.base_model          # final-norm hidden states, no LM head
        self.hidden_size = int(self.backbone.config.hidden_size)
        self.feature_size = 4 * self.hidden_size
        self.head: Head | None = None
        self._cache: dict[str, torch.Tensor] = {}

    def ready(self) -> bool:
        return True

    def settings_dict(self) -> dict:
        return asdict(self.settings)

    # ---- features -------------------------------------------------------------------------------
    def clear_cache(self) -> None:
        self._cache.clear()

    def prompt(self, x: RMInput) -> str:
        return format_rm_prompt(x, self.settings.max_screen_chars)

    def _tokenize(self, prompt: str) -> list[int]:
        ids = self.tokenizer(prompt)["input_ids"]
        return truncate_left(ids, self.settings.max_tokens, self.tokenizer.bos_token_id)

    @torch.inference_mode()
    def _encode(self, seqs: list[list[int]], pool: bool) -> torch.Tensor:
        """Final hidden states of each sequence, at the last token or mean-pooled over its real
        tokens: one left-padded forward, positions counted over real tokens only, so a row's
        result does not depend on its batch-mates."""
        ids, mask = left_pad(seqs, self.tokenizer.pad_token_id)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.encoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        h = out.last_hidden_state.float()
        if not pool:
            return h[:, -1]
        m = mask[..., None].float()
        return (h * m).sum(1) / m.sum(1).clamp(min=1)

    def _cached(self, texts: list[str], pool: bool) -> torch.Tensor:
        """[N, H] encodings of ``texts`` (see _encode), each text run at most once."""
        keys = [("pool:" if pool else "last:") + hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        text_of = dict(zip(keys, texts))
        seqs = [self._tokenize(text_of[k]) for k in todo]
        for batch in token_batches([len(s) for s in seqs], self.settings.feature_batch_tokens):
            rows = self._encode([seqs[i] for i in batch], pool)
            for i, row in zip(batch, rows):
                self._cache[todo[i]] = row.clone()
        return torch.stack([self._cache[k] for k in keys])

    def features(self, inputs: Sequence[RMInput]) -> torch.Tensor:
        """[N, 4H] features (see the module docstring); texts already seen are not run again."""
        if not inputs:
            return torch.empty(0, self.feature_size)
        context = self._cached([self.prompt(x) for x in inputs], pool=False)
        goal = self._cached([x.goal for x in inputs], pool=True)
        action = self._cached([x.action or "(none)" for x in inputs], pool=True)
        return torch.cat([context, goal, action, goal * action], dim=-1)

    # ---- head -----------------------------------------------------------------------------------
    def _trained_head(self) -> Head:
        if self.head is None:
            raise RuntimeError("reward model head is not trained: call fit() or load() first")
        return self.head

    @torch.no_grad()
    def score(self, inputs: Sequence[RMInput]) -> list[float]:
        """Action-level reward sigmoid(head(features)) ∈ [0, 1] per input."""
        head = self._trained_head().eval()
        if not inputs:
            return []
        return torch.sigmoid(head(self.features(inputs))).tolist()

    def fit(self, inputs: Sequence[RMInput], labels: Sequence[int], epochs: int | None = None) -> dict:
        """Train a fresh head (seeded): AdamW on BCE-with-logits with pos_weight, features
        standardised by the training set's mean/std; full batch when n ≤ batch_size.

        loss_first / loss_last are the mean training loss of the first / last epoch.
        """
        y = _check_labels(inputs, labels)
        x = self.features(inputs)
        epochs = self.settings.epochs if epochs is None else epochs
        if epochs < 1:
            raise ValueError(f"epochs must be ≥ 1, got {epochs}")
        self.head, stats = train_fresh_head(x, y, self.settings, epochs)
        return stats

    def load_files(self, files: dict[str, bytes]) -> None:
        """A saved head (``save``'s files by name, e.g. a Ray Train checkpoint's) into this model."""
        with tempfile.TemporaryDirectory(prefix="evoray-rm-head-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            self._load_files(Path(tmp))

    def evaluate(self, inputs: Sequence[RMInput], labels: Sequence[int], threshold: float = 0.5) -> dict:
        """Positive-class F1 / precision / recall and accuracy of (score > threshold)."""
        y = _check_labels(inputs, labels).long().tolist()
        preds = [int(s > threshold) for s in self.score(inputs)]
        tp = sum(p == 1 and t == 1 for p, t in zip(preds, y))
        n_pred, n_pos = sum(preds), sum(y)
        return {"f1": f1(preds, y), "precision": tp / n_pred if n_pred else 0.0,
                "recall": tp / n_pos if n_pos else 0.0,
                "accuracy": sum(p == t for p, t in zip(preds, y)) / len(y), "n": len(y), "n_pos": n_pos}

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write head + normaliser (safetensors) and settings (json) into a temp dir next to
        ``directory``, then rename it into place. The backbone is referenced by name only."""
        from actors.storage import is_uri, shared_mode, write_dir
        if is_uri(directory):          # a run directory on s3:// etc.: written locally, uploaded
            write_dir(str(directory), self._write_files)
            return directory
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        shared_mode(tmp, directory=True)
        try:
            self._write_files(tmp)
            _replace_dir(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _write_files(self, directory: Path) -> None:
        write_head(directory, self._trained_head(), self.feature_size, self.settings)

    def load(self, directory: str | os.PathLike) -> None:
        """Load a saved head into this model (its backbone and feature cache are kept; its settings
        take the saved head_hidden). The saved feature settings (model, max_tokens,
        max_screen_chars) must equal this model's: the head was trained on those features."""
        from actors.storage import read_dir
        with read_dir(str(directory)) as local:
            self._load_files(local)

    def _load_files(self, directory: Path) -> None:
        from safetensors.torch import load_file

        meta = read_meta(directory)
        saved = meta["settings"]
        for name in FEATURE_SETTINGS:
            if saved[name] != getattr(self.settings, name):
                raise ValueError(f"saved reward model has {name}={saved[name]!r}, this model has "
                                 f"{getattr(self.settings, name)!r}: features would differ")
        if meta.get("feature_size") != self.feature_size:
            raise ValueError(f"saved head expects {meta.get('feature_size')} features, "
                             f"this backbone gives {self.feature_size}")
        head = Head(self.feature_size, saved["head_hidden"])
        head.load_state_dict(load_file(Path(directory) / HEAD_FILE))
        self.settings.head_hidden = saved["head_hidden"]
        self.head = head.eval()

    @classmethod
    def from_saved(cls, directory: str | os.PathLike, **overrides) -> "RewardModel":
        """A new RewardModel with the saved settings (``overrides`` replace some, e.g. threads)."""
        settings = RewardModelSettings(**{**read_meta(directory)["settings"], **overrides})
        model = cls(settings)
        model.load(directory)
        return model


def new_head(feature_size: int, settings: RewardModelSettings) -> Head:
    """A head seeded by ``settings.seed`` (the same on every process), the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        return Head(feature_size, settings.head_hidden)


def train_fresh_head(x: torch.Tensor, y: torch.Tensor, s: RewardModelSettings, epochs: int,
                     wrap=lambda head: head, rank: int = 0, world: int = 1) -> tuple[Head, dict]:
    """A new seeded head, standardised by ``x``'s mean/std, trained by ``fit_head`` (through
    ``wrap``, e.g. DDP, on the wrapped module's device); (the head on the CPU, in eval mode; stats)."""
    n, n_pos = len(y), int(y.sum())
    pos_weight = resolve_pos_weight(s.pos_weight, n_pos, n - n_pos)
    head = new_head(x.shape[1], s)
    head.set_normaliser(x)
    model = wrap(head)
    device = next(model.parameters()).device
    losses = fit_head(model, x.to(device), y.to(device), pos_weight, s, epochs, rank, world)
    return head.cpu().eval(), {"loss_first": losses[0], "loss_last": losses[-1], "n": n, "n_pos": n_pos,
                               "pos_weight": pos_weight, "one_class": n_pos in (0, n), "epochs": epochs}


def fit_head(head: nn.Module, x: torch.Tensor, y: torch.Tensor, pos_weight: float,
             s: RewardModelSettings, epochs: int, rank: int = 0, world: int = 1) -> list[float]:
    """AdamW on BCE-with-logits (``pos_weight``) over seeded shuffled mini-batches B of
    ``batch_size``: loss(B) = Σ_{i∈B} ℓᵢ / |B|. Each epoch's mean loss Σᵢ ℓᵢ / n is returned.

    With ``world`` ranks (``head`` wrapped in DDP, which averages gradients) every rank holds all of
    x and draws the same B; rank r runs B[r::world] with loss world · Σ_{i∈B_r} ℓᵢ / |B|, so the
    average over ranks is loss(B) and every rank takes the one-process step. A rank with no rows
    in B runs one with weight 0 (each backward is an all-reduce every rank joins)."""
    from actors.data_parallel import sum_over_ranks
    gen = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.AdamW(head.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight], device=x.device), reduction="sum")
    head.train()
    losses = []
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(y), generator=gen).split(max(1, s.batch_size)):
            opt.zero_grad()
            total += share_backward(head, loss_fn, x, y, idx, rank, world)
            opt.step()
        losses.append(sum_over_ranks(total, world) / len(y))
    return losses


def share_backward(head: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                   rank: int, world: int) -> float:
    """Gradients of world · Σ_{i∈B_r} ℓᵢ / |B| for rank r's rows B_r = idx[r::world] (their average
    over ranks: the gradient of the mini-batch's mean loss); Σ_{i∈B_r} ℓᵢ."""
    mine = idx[rank::world]
    weight = 1.0 if len(mine) else 0.0
    mine = mine if len(mine) else idx[:1]
    part = loss_fn(head(x[mine]), y[mine]) * weight
    (part * (world / len(idx))).backward()
    return float(part.detach())


def write_head(directory: Path, head: Head, feature_size: int, settings: RewardModelSettings) -> None:
    """``head.safetensors`` (weights and normaliser) and ``reward_model.json`` (settings)."""
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, Path(directory) / HEAD_FILE)
    meta = {"format": 2, "feature_size": feature_size, "settings": asdict(settings)}
    (Path(directory) / META_FILE).write_text(json.dumps(meta, indent=2))


def read_meta(directory: str | os.PathLike) -> dict:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a saved reward model (no {META_FILE})")
    return json.loads(path.read_text())


def _replace_dir(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing target is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_labels(inputs: Sequence[RMInput], labels: Sequence[int]) -> torch.Tensor:
    """Labels as a float tensor; ValueError on empty data, length mismatch or non-0/1 labels."""
    if len(inputs) == 0:
        raise ValueError("reward model needs at least one example (got no inputs)")
    if len(inputs) != len(labels):
        raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
    bad = [v for v in labels if v not in (0, 1)]
    if bad:
        raise ValueError(f"labels must be 0 or 1, got {bad[:3]}")
    return torch.tensor([float(v) for v in labels])
