"""Batched classification and steered generation over many conversations.

The engine behind the offline CLI, the demo, calibration's strength search,
the evaluation and the benchmark, so every one of them runs the *same*
code path as a user's ``steerguard generate``: :class:`steerguard.plan.BatchPlan`
builds each batch's steering (AUTO is gated inside the prompt's own forward
pass) and :func:`steerguard.generation.generate` decodes it.

Rows are batched by similar token length (less padding) and results returned
in input order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steerguard.bundle import Bundle
from steerguard.generation import SamplingParams, generate
from steerguard.model.activations import LayerStates, batch_spans, last_token_states, states_with_spans
from steerguard.model.chat import Conversation
from steerguard.model.host import ModelHost
from steerguard.model.spans import TurnMarkers
from steerguard.plan import Applied, BatchPlan, SteeringRequest
from steerguard.verdict import Verdict, verdicts_from_states


@dataclass
class Generated:
    text: str
    token_ids: list[int]
    finish_reason: str
    applied: Applied


def _by_length(host: ModelHost, convs: Sequence[Conversation]) -> list[int]:
    return sorted(range(len(convs)), key=lambda i: len(host.token_ids(convs[i])))


def _progress(total: int, desc: str, enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="prompt")


def classify(
    host: ModelHost,
    bundle: Bundle,
    convs: Sequence[Conversation],
    *,
    batch_size: int = 16,
    progress: bool = False,
    threshold: float | None = None,
) -> list[Verdict]:
    """Probe verdicts (runs the model only up to the probe layer).

    Categories come from the bundle's content head when it has one, as the
    classifier serves them; the early exit (a cascade) is not applied: this
    is the probe's own verdict, the reference the service is measured against.
    """
    out: list[Verdict | None] = [None] * len(convs)
    order = _by_length(host, convs)
    bar = _progress(len(convs), "classify", progress)
    layer = bundle.probe_layer
    markers = TurnMarkers.for_tokenizer(host.tokenizer) if bundle.reads_content else None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = host.encode([convs[i] for i in idx])
        if markers is None:
            found = LayerStates(last_token_states(host, batch, [layer]))
        else:
            found = states_with_spans(host, batch, [layer], batch_spans(batch, markers))
        verdicts = verdicts_from_states(bundle, found.states[layer], threshold, content=found.content)
        for i, v in zip(idx, verdicts, strict=True):
            out[i] = v
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return [v for v in out if v is not None]


def generate_many(
    host: ModelHost,
    bundle: Bundle | None,
    convs: Sequence[Conversation],
    requests: Sequence[SteeringRequest],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "generate",
    sampling: SamplingParams | None = None,
    tail: tuple[int, float] | None = None,
) -> list[Generated]:
    """Generation with per-row steering requests; results in input order.

    Greedy for ``max_new_tokens`` unless ``sampling`` says otherwise (it then
    sets the length too). ``tail``: :attr:`SteeringState.tail`.
    """
    from steerguard.model.steering import SteeringState
    from steerguard.plan import Mode

    if len(convs) != len(requests):
        raise ValueError("one steering request per conversation")
    out: list[Generated | None] = [None] * len(convs)
    order = _by_length(host, convs)
    bar = _progress(len(convs), desc, progress)
    params = sampling or SamplingParams(max_new_tokens=max_new_tokens)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = host.encode([convs[i] for i in idx])
        reqs = [requests[i] for i in idx]
        if bundle is None:
            if any(r.mode is not Mode.NONE for r in reqs):
                raise ValueError("steering needs a bundle")
            state, extra, applied = SteeringState(), set(), [Applied(Mode.NONE) for _ in idx]
        else:
            plan = BatchPlan(bundle, reqs, host.identity.hidden_size)
            state, extra, applied = plan.state, plan.extra_layers, plan.applied
            state.tail = tail
        rows = generate(host, batch, state, [params] * len(idx), extra_layers=extra)
        for j, i in enumerate(idx):
            r = rows[j]
            out[i] = Generated(host.decode(r.token_ids), r.token_ids, r.finish_reason, applied[j])
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return [g for g in out if g is not None]


@torch.inference_mode()
def response_nll(
    host: ModelHost, convs: Sequence[Conversation], responses: Sequence[Sequence[int]], *, batch_size: int = 8
) -> tuple[float, int]:
    """Total negative log-likelihood of the response tokens under the *unsteered* model, and their count."""
    total, count = 0.0, 0
    items = [(host.token_ids(c), list(r)) for c, r in zip(convs, responses, strict=True) if len(r) > 0]
    items.sort(key=lambda t: len(t[0]) + len(t[1]))
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = host.pad([p + r for p, r in chunk])
        logits = host.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = batch.input_ids[:, 1:]
        tok_lp = logp.gather(-1, targets[..., None])[..., 0]
        width = batch.input_ids.shape[1]
        for i, (_, r) in enumerate(chunk):
            k = len(r)
            # response tokens occupy the last k positions; predicted from positions width-k-1 .. width-2
            total -= float(tok_lp[i, width - k - 1 : width - 1].sum())
            count += k
    return total, count


def perplexity(host: ModelHost, convs: Sequence[Conversation], responses: Sequence[Sequence[int]]) -> float:
    """Corpus perplexity of responses under the unsteered model (``nan`` if none)."""
    nll, n = response_nll(host, convs, responses)
    return math.exp(nll / n) if n else float("nan")
