"""MM-UPT's synthetic questions: prompts that make the model write them, and the filter.

Two ways to write a question (arXiv 2505.22453, §4.3):
- **in-context**: the model sees the image, an original question and its answer, and writes a new,
  similar question;
- **direct**: the model sees only the image and writes a question (more diverse, more
  hallucination).

The paper released only the resulting datasets. The filter here drops a candidate that is
**malformed** (no question in the reply), a **duplicate** (its words overlap an earlier question
about the same image — the original included — by at least ``max_similarity``, Jaccard), or
**unanswerable** (the model's own answers to it do not agree: the majority share of ``k``
samples is below ``min_share``, or none has an answer). Agreement is what the majority-vote
reward needs to carry a signal; a question nobody agrees on only adds noise.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from jobs.srt.rewards import majority_vote

IN_CONTEXT = ("Here is a question about this image and its answer.\n"
              "Question: {question}\nAnswer: {answer}\n"
              "Write one new question about the same image, similar to this one but different, "
              "with a short answer. Reply with the new question only.")
DIRECT = ("Write one question about this image that has a short answer (a number or a word). "
          "Reply with the question only.")
LABEL = re.compile(r"^\s*(?:\d+[.)]\s*|[-*]\s*)?(?:new\s+)?(?:question|q)\s*\d*\s*[:.-]\**\s*", re.I)
MARKUP = "\"'`*#_ "
WORD = re.compile(r"[a-z0-9]+")


def synthesis_prompt(mode: str, question: str | None = None, answer: str | None = None) -> str:
    if mode == "in_context":
        if question is None or answer is None:
            raise ValueError("in-context synthesis needs the original question and its answer")
        return IN_CONTEXT.format(question=question, answer=answer)
    if mode == "direct":
        return DIRECT
    raise ValueError(f"unknown synthesis mode {mode!r}; use 'in_context' or 'direct'")


def parse_question(text: str, min_words: int = 3, max_chars: int = 200) -> Optional[str]:
    """The question in a model's reply: the first line with a '?', its label ("Question:",
    "1.", quotes) removed, cut after the '?'. None when there is none or it is too short/long."""
    for line in text.splitlines():
        line = LABEL.sub("", line.strip(MARKUP)).strip(MARKUP)
        if "?" not in line:
            continue
        question = line[:line.index("?") + 1].strip(MARKUP)
        if len(words(question)) >= min_words and len(question) <= max_chars:
            return question
        return None
    return None


def words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


def similarity(a: str, b: str) -> float:
    """Jaccard overlap of the two questions' word sets (1.0: the same words)."""
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


def is_duplicate(question: str, earlier: list[str], max_similarity: float) -> bool:
    return any(similarity(question, e) >= max_similarity for e in earlier)


@dataclass
class Candidate:
    source_id: str            # the task whose image (and, in context, question) it came from
    mode: str                 # in_context | direct
    reply: str                # what the model wrote
    question: Optional[str] = None
    status: str = "pending"   # kept | malformed | duplicate | unanswerable
    majority: Optional[str] = None
    share: float = 0.0
    id: Optional[str] = None  # its task id once it is answered (and trained on, if kept)


def screen(candidates: list[Candidate], originals: dict[str, str], max_similarity: float) -> list[Candidate]:
    """First pass, no model needed: parse each reply, mark malformed ones and duplicates (against
    the image's original question and the candidates for that image before it). Returns the
    candidates still pending, in order."""
    seen: dict[str, list[str]] = {}
    pending = []
    for c in candidates:
        c.question = parse_question(c.reply)
        earlier = seen.setdefault(c.source_id, [originals[c.source_id]])
        if c.question is None:
            c.status = "malformed"
        elif is_duplicate(c.question, earlier, max_similarity):
            c.status = "duplicate"
        else:
            earlier.append(c.question)
            pending.append(c)
    return pending


def judge_answerable(candidate: Candidate, answers: list[Optional[str]], min_share: float,
                     equal: Callable[[str, str], bool]) -> Candidate:
    """Second pass, on the model's ``answers`` to the candidate: kept when their majority answer
    holds at least ``min_share`` of the samples (unanswered samples count against it)."""
    vote = majority_vote(answers, equal)
    candidate.majority, candidate.share = vote.majority, vote.share
    candidate.status = "kept" if vote.majority is not None and vote.share >= min_share else "unanswerable"
    return candidate
