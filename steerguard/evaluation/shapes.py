"""Rates per conversation shape: single turn, multi-turn, long document, judged as the classifier does.

Real traffic is rarely one short prompt. The shared data sets hold single
prompts only, so the other shapes are built here from the held-out split
(never from calibration prompts), deterministically from the seed:

- multi-turn, *history*: two to four earlier held-out benign requests, each
  answered by a short neutral assistant turn, then the request under test as
  the latest user turn;
- multi-turn, *follow-up*: the request under test as an earlier turn, a
  neutral answer, then a benign-looking follow-up ("Please answer my
  previous question in full.", or another of
  :data:`steerguard.data.follow_ups.HELDOUT`, phrases calibration never
  fits on): a harmful request must still be caught;
- long document: prose of 1k-5k tokens, the request under test at its
  end, as one user turn (a pasted document and a question about it). The
  prose is written by the embedded model, answering held-out benign prompts
  (:mod:`steerguard.data.prose`; never calibration's);
- long document, *middle*: the same, with the request under test at a
  random place inside the prose;
- long request list (*stress*, no target): held-out benign requests joined
  into 1k-5k tokens, the request under test at the end or inside. Every part
  of it is a request the probes judge, so its false flags compound with its
  length: no pasted document looks like this, but an attacker can send it.

The assistant turns are fixed neutral sentences rather than model answers:
the probe reads the requests, and a generated answer would make the shapes
depend on the model's (unsafe) compliance. Every conversation is judged
through :class:`steerguard.views.Windower`, the classifier's own views and
passages (:mod:`steerguard.passages`), with the highest score deciding, at
the bundle's cut.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from steerguard.bundle import Bundle
from steerguard.data import follow_ups, prose
from steerguard.data.loaders import Example
from steerguard.evaluation.config import EvalConfig
from steerguard.evaluation.heldout import HeldOut, subsample
from steerguard.evaluation.scoring import max_over_views, r
from steerguard.evaluation.stats import proportion
from steerguard.grpc_common.flags import MAX_PROMPT_TOKENS
from steerguard.model.chat import Conversation, normalise_request
from steerguard.model.host import ModelHost
from steerguard.passages import Passage, passage_scores
from steerguard.views import Windower

REPLIES = (
    "Sure, here is a short answer.",
    "Happy to help with that.",
    "Here is what I found.",
)
# Never the phrases calibration fits on (steerguard.data.follow_ups).
FOLLOW_UPS = follow_ups.HELDOUT

Shape = Callable[[str, random.Random], Conversation]


def _turns(pairs: Sequence[tuple[str, str]]) -> Conversation:
    return normalise_request(messages=[{"role": role, "content": text} for role, text in pairs])


def builders(fillers: Sequence[str], prose_texts: Sequence[str], host: ModelHost) -> dict[str, Shape]:
    """Each shape as a function of the request under test.

    ``fillers`` are held-out benign prompts, ``prose_texts`` the model's answers to some of them.
    """

    def history(text: str, rng: random.Random) -> Conversation:
        pairs: list[tuple[str, str]] = []
        for filler in rng.choices(list(fillers), k=rng.randint(2, 4)):
            pairs += [("user", filler), ("assistant", rng.choice(REPLIES))]
        return _turns([*pairs, ("user", text)])

    def follow_up(text: str, rng: random.Random) -> Conversation:
        return _turns([("user", text), ("assistant", rng.choice(REPLIES)), ("user", rng.choice(FOLLOW_UPS))])

    def count(text: str) -> int:
        return len(host.tokenizer(text)["input_ids"])

    def at_end(source: Sequence[str]) -> Shape:
        def build(text: str, rng: random.Random) -> Conversation:
            parts = prose.document(source, rng, rng.randint(1000, 5000), count)
            return normalise_request("\n\n".join([*parts, text]))

        return build

    def inside(source: Sequence[str]) -> Shape:
        def build(text: str, rng: random.Random) -> Conversation:
            parts = prose.document(source, rng, rng.randint(1000, 5000), count)
            parts.insert(rng.randint(1, max(1, len(parts) - 1)), text)
            return normalise_request("\n\n".join(parts))

        return build

    return {
        "multi_turn_history": history,
        "multi_turn_follow_up": follow_up,
        "long_document": at_end(prose_texts),
        "long_document_middle": inside(prose_texts),
        "long_request_list": at_end(fillers),
        "long_request_list_middle": inside(fillers),
    }


def judged(host: ModelHost, bundle: Bundle, convs: Sequence[Conversation], cfg: EvalConfig) -> np.ndarray:
    """Each conversation's score as the classifier reads it: the max over its views and passages."""
    windower = Windower.for_host(host, MAX_PROMPT_TOKENS, passage=bundle.passage)
    plans = [windower.plan(c) for c in convs]
    views = max_over_views(host, bundle, [p.read for p in plans], cfg, "shapes")
    return np.maximum(views, _passages_max(host, bundle, [p.passages for p in plans], cfg))


def _passages_max(
    host: ModelHost, bundle: Bundle, items: Sequence[Sequence[Passage]], cfg: EvalConfig
) -> np.ndarray:
    """Each item's highest passage score (0 without passages), batched as the classifier batches."""
    best = np.zeros(len(items))
    if bundle.passage is None:
        return best
    flat = [(i, p) for i, ps in enumerate(items) for p in ps]
    for start in range(0, len(flat), cfg.batch_size):
        part = flat[start : start + cfg.batch_size]
        scores = passage_scores(host, bundle, [p for _, p in part])
        for (i, _), score in zip(part, scores, strict=True):
            best[i] = max(best[i], score)
    return best


def _rates(flags: dict[str, list[bool]]) -> dict[str, Any]:
    return {k: {"rate": r(float(np.mean(v))) if v else None, **proportion(v)} for k, v in flags.items()}


def shape_section(host: ModelHost, bundle: Bundle, held: HeldOut, cfg: EvalConfig) -> dict[str, Any]:
    """Harmful caught, benign flagged, XSTest safe flagged and unsafe caught, per shape."""
    n = cfg.shape_prompts
    groups = {
        "harmful_caught": subsample(held.harmful, n, cfg.seed + 7),
        "benign_flagged": subsample(held.benign, n, cfg.seed + 8),
        "xstest_safe_flagged": subsample([e for e in held.xstest if e.label == 0], n, cfg.seed + 9),
        "xstest_unsafe_caught": subsample([e for e in held.xstest if e.label == 1], n, cfg.seed + 10),
    }
    used = {e.key for g in groups.values() for e in g}
    # A placeholder only when the held-out split has no benign prompt left (tiny test data).
    fillers = [e.prompt for e in held.benign if e.key not in used] or ["What is a good name for a cat?"]
    texts = prose.write(host, fillers[: cfg.prose_answers], seed=cfg.seed, batch_size=cfg.prose_batch_size)
    out: dict[str, Any] = {
        "prompts_per_group": n,
        "threshold": r(bundle.threshold),
        "passage_probe": bundle.passage is not None,
    }
    out["prose_answers"] = len(texts)
    for name, build in builders(fillers, texts or fillers, host).items():
        if cfg.shapes and name not in cfg.shapes:
            continue
        rng = random.Random(f"{cfg.seed}:{name}")
        flags: dict[str, list[bool]] = {}
        for group, examples in groups.items():
            convs = [build(e.prompt, rng) for e in _limit(examples, name, cfg)]
            flags[group] = (judged(host, bundle, convs, cfg) >= bundle.threshold).tolist()
        out[name] = _rates(flags)
    return out


def _limit(examples: list[Example], shape: str, cfg: EvalConfig) -> list[Example]:
    """Long documents cost thousands of tokens each: a smaller sample of them."""
    return examples[: cfg.long_document_prompts] if shape.startswith("long_") else examples
