"""The refusal head's training text written by the model itself, under the refusal vector.

Why: a head trained on template refusals refuses every flagged row, but the
templates are English SmolLM2 would not write: their perplexity under the
unsteered model was 13.9x its own answers' (held out, docs/evaluation.md),
against the issue's 1.5x. The refusal vector's refusals are in the model's
own words but cost fluency while the vector is on. So each harmful
calibration prompt is answered a few ways under the calibrated refusal
vector (the schedules of ``refusal_head_schedules``: the vector throughout,
or at full strength for the opening and lighter after it), each answer is
cut at its last full sentence, the ones the strict judge counts as refusals
are kept, and the most fluent of them (lowest mean token NLL under the
unsteered model) becomes the prompt's training answer. A prompt with no
refusal among them is left out. No answer is written by hand and held-out
prompts are never read.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steerguard import judge
from steerguard.bundle import Bundle
from steerguard.model.chat import Conversation
from steerguard.model.host import ModelHost
from steerguard.offline import generate_many, response_nll
from steerguard.plan import Mode, SteeringRequest

_ENDS = (". ", ".\n", "! ", "? ")


def whole_sentences(text: str) -> str | None:
    """``text`` up to its last full sentence, or None when that leaves under 20 characters."""
    body = text.rstrip()
    last = len(body) - 1 if body.endswith((".", "!", "?")) else max(body.rfind(e) for e in _ENDS)
    return body[: last + 1] if last >= 20 else None


def candidates(
    host: ModelHost,
    bundle: Bundle,
    convs: Sequence[Conversation],
    schedules: Sequence[tuple[int, float]],
    max_new_tokens: int,
) -> list[list[list[int]]]:
    """Per conversation, the token ids of its refusals under each schedule (0 steps: no tail)."""
    found: list[list[list[int]]] = [[] for _ in convs]
    forced = [SteeringRequest(Mode.REFUSAL)] * len(convs)
    for steps, gain in schedules:
        tail = (steps, gain) if steps > 0 else None
        outs = generate_many(host, bundle, convs, forced, max_new_tokens=max_new_tokens, tail=tail)
        for i, out in enumerate(outs):
            text = out.text if out.finish_reason == "stop" else whole_sentences(out.text)
            if text and judge.is_refusal(text):
                found[i].append([int(t) for t in host.tokenizer(text, add_special_tokens=False)["input_ids"]])
    return found


@torch.inference_mode()
def most_fluent(host: ModelHost, conv: Conversation, answers: Sequence[list[int]]) -> list[int]:
    """The answer with the lowest mean token NLL under the unsteered model."""

    def mean_nll(answer: list[int]) -> float:
        total, count = response_nll(host, [conv], [answer])
        return total / max(1, count)

    return min(answers, key=mean_nll)


def steered_answers(
    host: ModelHost,
    bundle: Bundle,
    convs: Sequence[Conversation],
    schedules: Sequence[tuple[int, float]],
    max_new_tokens: int,
) -> list[list[int] | None]:
    """Per conversation its training answer (token ids, no end of turn), or None without a refusal."""
    found = candidates(host, bundle, convs, schedules, max_new_tokens)
    pairs = zip(convs, found, strict=True)
    return [most_fluent(host, c, answers) if answers else None for c, answers in pairs]
