"""Calibration of the refusal head (SafeSwitch): a low-rank delta on the LM head.

SafeSwitch answers a flagged request with a fine-tuned LM head that writes an
informative refusal. Here the head is a rank-``r`` delta on the logits,
``logits = W h + (h @ a) @ b``, so the model's own LM head stays shared and
the delta is small (rank 16: 0.6% of SmolLM2-135M's parameters; SafeSwitch
keeps under 6%). Only the LM head changes, so the decoder's states under
teacher forcing are fixed: they are read once (the LM head's input at every
position of prompt + refusal) and the delta is fitted on them with Adam, a
few minutes on 2 cores.

Training text (``refusal_head_text``): by default each harmful calibration
prompt with a category answered by the model's own most fluent refusal under
the calibrated refusal vector (:mod:`steerguard.calibration.steered_refusals`);
or ``templates``: ``refusal_head_copies`` template refusals of its category
(:mod:`steerguard.data.refusals`), informative but far from the model's own
style. Either ends with the chat template's end of turn. A fifth of the
prompts (grouped) is held apart to report the fit's token accuracy;
held-out prompts are never read.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steerguard.bundle import Bundle
from steerguard.calibration.steered_refusals import steered_answers
from steerguard.data import refusals
from steerguard.data.loaders import Example
from steerguard.logs import get_logger
from steerguard.model.chat import normalise_request
from steerguard.model.hooks import output_hook
from steerguard.model.host import ModelHost

log = get_logger(__name__)


@dataclass(frozen=True)
class HeadSettings:
    """The fit's settings (defaults: ``refusal_head_*`` in the calibration config)."""

    rank: int
    copies: int  # template refusals per prompt
    epochs: int
    lr: float
    seed: int
    batch_size: int
    batch_positions: int = 512  # positions per Adam step
    text: str = "templates"  # or "steered" (needs the calibrated bundle)
    schedules: tuple[tuple[int, float], ...] = ((0, 1.0),)  # steered text: see steered_refusals
    max_new_tokens: int = 48  # steered text's length before it is cut at a sentence


TEXTS = ("steered", "templates")


@dataclass
class Positions:
    """The LM head's inputs at teacher-forced positions, the tokens they predict, and each one's prompt."""

    hidden: torch.Tensor  # [N, H]
    targets: torch.Tensor  # [N]
    groups: torch.Tensor  # [N]


def _end_of_turn(host: ModelHost) -> int:
    end = host.tokenizer.convert_tokens_to_ids("<|im_end|>")
    return int(end if isinstance(end, int) and end >= 0 else host.tokenizer.eos_token_id)


def steered_sequences(
    host: ModelHost, prompts: Sequence[Example], s: HeadSettings, bundle: Bundle
) -> list[tuple[list[int], int, int]]:
    """(ids, first answer index, prompt group) of prompt + the model's own steered refusal + end of turn."""
    convs = [normalise_request(e.prompt) for e in prompts]
    answers = steered_answers(host, bundle, convs, s.schedules, s.max_new_tokens)
    out = []
    for g, (conv, answer) in enumerate(zip(convs, answers, strict=True)):
        if answer is not None:
            ids = host.token_ids(conv)
            out.append(([*ids, *answer, _end_of_turn(host)], len(ids), g))
    return out


def training_sequences(
    host: ModelHost, prompts: Sequence[Example], s: HeadSettings, bundle: Bundle | None
) -> tuple[list[tuple[list[int], int, int]], bool]:
    """The fit's sequences under ``s.text``, and whether they are the steered text.

    The steered text falls back to the templates when the vector makes no
    refusal the judge accepts (a random model).
    """
    if s.text not in TEXTS:
        raise ValueError(f"refusal head text must be one of {TEXTS}, not {s.text!r}")
    if s.text == "templates":
        return sequences(host, prompts, s), False
    if bundle is None:
        raise ValueError("the steered training text needs the calibrated bundle's refusal vector")
    steered = steered_sequences(host, prompts, s, bundle)
    if not steered:
        log.warning("refusal head: no steered refusal to train on; template text instead")
        return sequences(host, prompts, s), False
    return steered, True


def sequences(
    host: ModelHost, prompts: Sequence[Example], s: HeadSettings
) -> list[tuple[list[int], int, int]]:
    """(ids, first answer index, prompt group) of prompt + template refusal + end of turn."""
    rng = random.Random(s.seed + 61)
    eos = _end_of_turn(host)
    out = []
    for g, e in enumerate(prompts):
        ids = host.token_ids(normalise_request(e.prompt))
        for _ in range(s.copies):
            text = refusals.refusal(str(e.category), rng)
            answer = [int(i) for i in host.tokenizer(text, add_special_tokens=False)["input_ids"]]
            out.append(([*ids, *answer, int(eos)], len(ids), g))
    return out


def _lm_head_inputs(host: ModelHost, batch: Any) -> torch.Tensor:
    """``[B, T, H]``: what the LM head reads at every position of ``batch`` (the final norm's output).

    Read from the norm with ``logits_to_keep=1``: the LM head itself then runs
    on one position, not on every position's 49k logits.
    """
    seen: list[torch.Tensor] = []

    def keep(_hidden: torch.Tensor, normed: torch.Tensor) -> None:
        seen.append(normed.detach().float().cpu())

    with output_hook(host.final_norm, keep):
        host.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            logits_to_keep=1,
        )
    return seen[0]


@torch.inference_mode()
def read_positions(host: ModelHost, seqs: Sequence[tuple[list[int], int, int]], batch_size: int) -> Positions:
    """Each answer token's predicting state: the LM head's input one position before it."""
    hidden, targets, groups = [], [], []
    for start in range(0, len(seqs), batch_size):
        part = seqs[start : start + batch_size]
        h = _lm_head_inputs(host, host.pad([ids for ids, _, _ in part]))
        width = h.shape[1]
        for row, (ids, first, g) in enumerate(part):
            offset = width - len(ids)
            hidden.append(h[row, offset + first - 1 : offset + len(ids) - 1])
            targets.append(torch.tensor(ids[first:]))
            groups.append(torch.full((len(ids) - first,), g))
    return Positions(torch.cat(hidden), torch.cat(targets), torch.cat(groups))


@torch.inference_mode()
def base_logits(weight: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """``[N, V]`` the LM head's own logits, in half precision: fixed while the delta trains, so made once."""
    w = weight.detach().float()
    return torch.cat([(hidden[i : i + 2048] @ w.T).half() for i in range(0, len(hidden), 2048)])


def fit(base: torch.Tensor, data: Positions, s: HeadSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``s.rank`` factors ``a [H, r]``, ``b [r, V]`` minimising cross-entropy over ``data``.

    ``base``: the LM head's logits at ``data``'s positions (:func:`base_logits`).
    """
    gen = torch.Generator().manual_seed(s.seed + 62)
    h_dim, vocab = data.hidden.shape[1], base.shape[1]
    a = (torch.randn(h_dim, s.rank, generator=gen) / h_dim**0.5).requires_grad_()
    b = torch.zeros(s.rank, vocab, requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=s.lr)
    n = len(data.targets)
    for epoch in range(s.epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, s.batch_positions):
            idx = order[start : start + s.batch_positions]
            logits = base[idx].float() + (data.hidden[idx] @ a) @ b
            loss = torch.nn.functional.cross_entropy(logits, data.targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        log.info("refusal head epoch", epoch=epoch, loss=round(total / n, 4))
    return a.detach().contiguous(), b.detach().contiguous()


@torch.inference_mode()
def token_accuracy(
    base: torch.Tensor, data: Positions, a: torch.Tensor | None, b: torch.Tensor | None
) -> float:
    """Share of positions whose greedy token is the target, with the delta (or without: ``a`` None)."""
    right = 0
    for start in range(0, len(data.targets), 2048):
        logits = base[start : start + 2048].float()
        if a is not None and b is not None:
            logits = logits + (data.hidden[start : start + 2048] @ a) @ b
        right += int((logits.argmax(1) == data.targets[start : start + 2048]).sum())
    return right / max(1, len(data.targets))


def _weight(host: ModelHost) -> torch.Tensor:
    weight = host.lm_head.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _subset(data: Positions, keep: torch.Tensor) -> Positions:
    return Positions(data.hidden[keep], data.targets[keep], data.groups[keep])


def refusal_head(
    host: ModelHost, harmful: Sequence[Example], s: HeadSettings, bundle: Bundle | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The head's manifest record and tensors, fitted on ``harmful`` prompts with a known category.

    ``bundle`` (its refusal vector) writes the steered training text.
    """
    prompts = [e for e in harmful if e.category in refusals.CONCERNS]
    seqs, steered = training_sequences(host, prompts, s, bundle)
    data = read_positions(host, seqs, s.batch_size)
    base = base_logits(_weight(host), data.hidden)
    apart = data.groups % 5 == 0
    a, b = fit(base[~apart], _subset(data, ~apart), s)
    test = _subset(data, apart)
    held = {
        "base": token_accuracy(base[apart], test, None, None),
        "head": token_accuracy(base[apart], test, a, b),
    }
    a, b = fit(base, data, s)  # the served head sees every prompt
    params = sum(p.numel() for p in host.model.parameters())
    record = {
        "rank": s.rank,
        "prompts": len(prompts),
        "positions": len(data.targets),
        "copies": 1 if steered else s.copies,
        "sequences": len(seqs),
        "epochs": s.epochs,
        "lr": s.lr,
        "parameter_share": round((a.numel() + b.numel()) / params, 5),
        "apart_token_accuracy": {k: round(v, 4) for k, v in held.items()},
        "training_text": (
            f"the model's most fluent refusal under the refusal vector, schedules {list(s.schedules)}"
            if steered
            else "steerguard.data.refusals templates by the prompt's category"
        ),
    }
    log.info("refusal head", **{k: v for k, v in record.items() if k != "training_text"})
    return record, {"refusal_head.a": a, "refusal_head.b": b}
