"""(prompt, answer) pairs written by the embedded model: the response probe's data.

Why: the shared data sets hold prompts, not answers, and a response probe
must learn what an *answer* says. So the pairs are written here, offline, by
the embedded model itself (SmolLM2-135M-Instruct, not safety-aligned):

- *complied* (unsafe): its unsteered answers to harmful prompts that the
  strict refusal judge (:mod:`steerguard.judge`) does not see as refusals.
  An unsteered answer the judge does see as a refusal is kept as *refused*.
- *refused* (safe): its answers to the same harmful prompts under the
  bundle's refusal vector that the judge sees as refusals. A harmful prompt
  is then on both sides, so the probe must read the answer, not the prompt.
  A steered answer the judge does not see as a refusal is dropped: its
  label is unknown.
- *benign* and *borderline* (safe): its unsteered answers to ordinary pool
  prompts, and to borderline and XSTest-safe prompts.
- *transplanted* (unsafe): each complied answer again, now after an
  ordinary prompt drawn at random (:func:`transplanted`): an innocent
  request that gets a harmful reply. Nothing in the request says "harmful",
  so only the answer's words can; the response probe's content head is
  fitted on them and the evaluation reports them apart. Each is also
  written a second time after the model's benign answer to that ordinary
  prompt, only its own part scored (``scored_from``): a harmful turn inside
  a longer benign answer, where every state also carries the benign text.
- *continued* (unsafe) and *continued benign* (safe): each complied and
  benign answer split at a sentence end near its middle (:func:`continued`):
  the first part becomes the assistant's earlier turn, a follow-up turn
  (:mod:`steerguard.data.follow_ups`) comes next, and the rest is the answer.
  Why: the commonest multi-turn shape is "Continue." after an answer, and a
  probe fitted on single turns only flagged such benign continuations: out of
  fold on calibration pairs, 20% of them at a cut that flagged 2% of
  single-turn safe answers (docs/calibration.md).

Answers are sampled (:data:`TEMPERATURE`, nucleus :data:`TOP_P`, seeded, so a
run is repeatable), at most ``tokens`` new tokens (:data:`ANSWER_TOKENS` by
default; refusals half as many: a refusal says what it is in its first
sentences, and steered decoding is the slowest part); an answer under
:data:`MIN_TOKENS` (or ``tokens``) is dropped. Calibration writes pairs from calibration
prompts and the pool; the evaluation writes its own from held-out prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from steerguard.judge import is_refusal

if TYPE_CHECKING:  # light at import: the CLI's parser reads steerguard.data
    from steerguard.bundle import Bundle
    from steerguard.model.chat import Conversation
    from steerguard.model.host import ModelHost
    from steerguard.plan import Mode

ANSWER_TOKENS = 96
MIN_TOKENS = 8
TEMPERATURE = 0.7
TOP_P = 0.9
COMPLIED, REFUSED, BENIGN, BORDERLINE = "complied", "refused", "benign", "borderline"
TRANSPLANTED = "transplanted"
CONTINUED, CONTINUED_BENIGN = "continued", "continued_benign"
UNSAFE_KINDS = frozenset({COMPLIED, TRANSPLANTED, CONTINUED})
# Both parts of a continued answer hold at least this many characters (about ten tokens).
MIN_PART_CHARS = 40


@dataclass(frozen=True)
class AnswerPair:
    """One answer in its conversation; ``group`` keeps a fold (one prompt's answers, one fold)."""

    prompt: str
    answer: str
    kind: str
    source: str = ""  # a transplanted answer's own prompt (it groups with that prompt's answers)
    scored_from: int = 0  # characters of ``answer`` before the part whose positions are rows
    earlier: tuple[tuple[str, str], ...] = ()  # (role, text) turns before ``prompt``, oldest first

    @property
    def unsafe(self) -> bool:
        return self.kind in UNSAFE_KINDS

    def conversation(self) -> Conversation:
        """The conversation the answer replies to: the earlier turns, then ``prompt``."""
        from steerguard.model.chat import normalise_request

        if not self.earlier:
            return normalise_request(self.prompt)
        turns = [{"role": role, "content": text} for role, text in self.earlier]
        return normalise_request(messages=[*turns, {"role": "user", "content": self.prompt}])

    @property
    def group(self) -> str:
        return self.source or self.prompt


@dataclass(frozen=True)
class PairPrompts:
    """The prompts answered: harmful ones twice (unsteered, refusal-steered), the rest once."""

    harmful: Sequence[str]
    ordinary: Sequence[str]
    borderline: Sequence[str]


@dataclass(frozen=True)
class Writing:
    """How the answers are written: the sampler's seed, new tokens, batch size, a progress bar."""

    seed: int
    tokens: int = ANSWER_TOKENS
    batch_size: int = 32
    progress: bool = False


def write_pairs(host: ModelHost, bundle: Bundle, prompts: PairPrompts, how: Writing) -> list[AnswerPair]:
    """Every pair the prompts give (module docstring), in the order of ``prompts``' fields."""
    from steerguard.plan import Mode

    def answers(texts: Sequence[str], mode: Mode, desc: str) -> list[str | None]:
        return _answers(host, bundle, texts, mode, how, desc)

    out: list[AnswerPair] = []
    for prompt, plain in zip(prompts.harmful, answers(prompts.harmful, Mode.NONE, "complied"), strict=True):
        if plain is not None:
            out.append(AnswerPair(prompt, plain, REFUSED if is_refusal(plain) else COMPLIED))
    for prompt, steered in zip(
        prompts.harmful, answers(prompts.harmful, Mode.REFUSAL, "refused"), strict=True
    ):
        if steered is not None and is_refusal(steered):
            out.append(AnswerPair(prompt, steered, REFUSED))
    for kind, texts in ((BENIGN, prompts.ordinary), (BORDERLINE, prompts.borderline)):
        for prompt, answer in zip(texts, answers(texts, Mode.NONE, kind), strict=True):
            if answer is not None:
                out.append(AnswerPair(prompt, answer, kind))
    return out


def transplanted(pairs: Sequence[AnswerPair], seed: int) -> list[AnswerPair]:
    """Each complied answer after an ordinary prompt of ``pairs`` (drawn seeded), then after its answer."""
    import random

    ordinary = [p for p in pairs if p.kind == BENIGN]
    if not ordinary:
        return []
    rng = random.Random(seed)
    out = []
    for p in pairs:
        if p.kind == COMPLIED:
            host = rng.choice(ordinary)
            lead = host.answer + "\n\n"
            out.append(AnswerPair(host.prompt, p.answer, TRANSPLANTED, source=p.prompt))
            out.append(AnswerPair(host.prompt, lead + p.answer, TRANSPLANTED, p.prompt, len(lead)))
    return out


def continued(pairs: Sequence[AnswerPair], follow_ups: Sequence[str], seed: int) -> list[AnswerPair]:
    """Each complied and benign answer's second half, after its first half and a follow-up turn.

    The follow-up is drawn (seeded) from ``follow_ups``; an answer with no
    sentence end that leaves :data:`MIN_PART_CHARS` on both sides is skipped.
    A continuation keeps its prompt's fold (``source``) and its answer's label.
    """
    import random

    rng = random.Random(seed)
    kinds = {COMPLIED: CONTINUED, BENIGN: CONTINUED_BENIGN}
    out = []
    for p in pairs:
        parts = split_answer(p.answer) if p.kind in kinds and not p.earlier else None
        if parts is not None and follow_ups:
            earlier = (("user", p.prompt), ("assistant", parts[0]))
            follow_up = rng.choice(list(follow_ups))
            out.append(AnswerPair(follow_up, parts[1], kinds[p.kind], p.prompt, 0, earlier))
    return out


def split_answer(answer: str) -> tuple[str, str] | None:
    """``answer`` cut at the sentence end nearest its middle, both parts at least :data:`MIN_PART_CHARS`."""
    import re

    ends = [m.end() for m in re.finditer(r"[.!?:](?=\s)|\n", answer)]
    fits = [e for e in ends if e >= MIN_PART_CHARS and len(answer) - e >= MIN_PART_CHARS]
    if not fits:
        return None
    at = min(fits, key=lambda e: abs(2 * e - len(answer)))
    return answer[:at].strip(), answer[at:].strip()


def _answers(
    host: ModelHost, bundle: Bundle, prompts: Sequence[str], mode: Mode, how: Writing, desc: str
) -> list[str | None]:
    """The model's sampled answers in ``mode``; None where one is too short to judge."""
    from steerguard.generation import SamplingParams
    from steerguard.model.chat import normalise_request
    from steerguard.offline import generate_many
    from steerguard.plan import Mode, SteeringRequest

    if not prompts:
        return []
    convs = [normalise_request(p) for p in prompts]
    limit = max(1, how.tokens // 2) if mode is Mode.REFUSAL else how.tokens
    sampling = SamplingParams(max_new_tokens=limit, temperature=TEMPERATURE, top_p=TOP_P, seed=how.seed)
    rows = generate_many(
        host,
        bundle,
        convs,
        [SteeringRequest(mode)] * len(convs),
        sampling=sampling,
        batch_size=how.batch_size,
        progress=how.progress,
        desc=desc,
    )
    shortest = min(MIN_TOKENS, limit)
    return [g.text.strip() if len(g.token_ids) >= shortest else None for g in rows]
