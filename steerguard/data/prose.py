"""Long benign texts written by the embedded model: the documents a user pastes into a chat.

Why: the shared data sets hold single prompts, and a document built by joining
a hundred unrelated prompts is not what a pasted document looks like: each of
its prompts is a request the probes must judge, so its false flags compound
with its length. Real long inputs are mostly prose (reports, articles, mails,
code explanations) with a question or an instruction around them. So prose
is written here, offline, by the embedded model itself: its *answers* to
benign prompts, sampled (temperature :data:`TEMPERATURE`, nucleus
:data:`TOP_P`, seeded, so a run is repeatable), unsteered. The model is not
safety-aligned, but it is only ever given benign prompts here, so what it
writes is benign prose on the prompts' topics. Calibration writes its
texts from the benign *pool* (never held-out prompts); the evaluation writes
its own from held-out prompts (:mod:`steerguard.evaluation.shapes`).

Answers are joined, in a seeded random order, into documents of a target
length (:func:`document`); an answer too short to be prose (under
:data:`MIN_TOKENS`) is dropped.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # light at import: the CLI's parser reads steerguard.data
    from steerguard.model.host import ModelHost

ANSWER_TOKENS = 160  # new tokens per answer: a paragraph or two
MIN_TOKENS = 24
TEMPERATURE = 0.8
TOP_P = 0.9


def write(
    host: ModelHost, prompts: Sequence[str], *, seed: int, batch_size: int = 32, progress: bool = False
) -> list[str]:
    """The model's sampled answers to ``prompts`` (benign), those of at least :data:`MIN_TOKENS`."""
    from steerguard.generation import SamplingParams
    from steerguard.model.chat import normalise_request
    from steerguard.offline import generate_many
    from steerguard.plan import Mode, SteeringRequest

    convs = [normalise_request(p) for p in prompts]
    sampling = SamplingParams(max_new_tokens=ANSWER_TOKENS, temperature=TEMPERATURE, top_p=TOP_P, seed=seed)
    out = generate_many(
        host,
        None,
        convs,
        [SteeringRequest(Mode.NONE)] * len(convs),
        sampling=sampling,
        batch_size=batch_size,
        progress=progress,
        desc="prose",
    )
    return [g.text.strip() for g in out if len(g.token_ids) >= MIN_TOKENS]


def document(
    texts: Sequence[str], rng: random.Random, target_tokens: int, count: Callable[[str], int]
) -> list[str]:
    """Answers, without replacement until all are used, until ``count`` of their join reaches the target."""
    if not texts:
        raise ValueError("no prose to build a document from")
    out: list[str] = []
    order: list[str] = []
    while not out or count("\n\n".join(out)) < target_tokens:
        if not order:
            order = rng.sample(list(texts), len(texts))
        out.append(order.pop())
    return out
