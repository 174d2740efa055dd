"""Answers judged as they are written: the response probe.

Why: the prompt probe reads the state after a *request*; judging an answer
with it, the answer put in a user turn, asks it a question it was never
fitted on. The response probe reads states *inside* the answer, in the
conversation's real chat framing: the conversation's tokens up to the
assistant's generation prompt, then the answer's tokens (chat-template
tokens typed into it made plain text, as everywhere). At every segment end of
the answer (:func:`steerguard.passages.segment_ends`: punctuation, line
breaks, at least every ``MAX_GAP`` tokens, and the answer's last token) a
logistic head (``response.*`` in the bundle) scores two states side by
side: the state at the end, which carries the conversation and what the
answer has said so far, and the mean state of the answer's last
:data:`RECENT_TOKENS` tokens, which carries what it says now. An
answer is unsafe as soon as one position reaches the probe's threshold (the
head's bias puts its calibrated cut there), so a stream is judged at each segment
end it reaches, and an answer's score is its highest.

Why these two (calibration pairs, docs/calibration.md): the end state
alone separated unsafe from safe answers worse (AUROC 0.92 vs 0.96 at layer
18) and a mean over the whole answer so far did as well as the recent mean
on answers of 96 tokens, but a long benign answer would dilute it: the
recent mean judges a harmful part of a long answer as it would judge it
alone. A position needs only its last :data:`RECENT_TOKENS` tokens besides
the model's own context, so an answer can be read in overlapping windows
(:data:`ANSWER_WINDOW_TOKENS`, :data:`WINDOW_OVERLAP_TOKENS`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # light at import: the sidecar and the classifier's config read this module
    import torch

    from steerguard.bundle import Bundle
    from steerguard.model.chat import Conversation
    from steerguard.model.host import ModelHost

# What the head reads at each segment end (recorded in the manifest).
FEATURES = "end+recent_mean"
RECENT_TOKENS = 64
# An answer longer than this is read in windows of this many of its tokens, each after the
# conversation's context, overlapping by WINDOW_OVERLAP_TOKENS: a window's positions are scored
# only after that much of the answer, so every position's recent mean is whole and the model has
# read well into the text. Why so much: the state shortly after a window's abrupt start misleads
# the head. On a 6.5k-token benign report (built for the streaming tests, not evaluation data),
# 64-token overlaps flagged positions 65-106 tokens into 4 of 15 windows (scores up to 0.75, cut
# 0.32); with 192 or 256 tokens before every scored position the highest score was 0.02.
ANSWER_WINDOW_TOKENS = 1024
WINDOW_OVERLAP_TOKENS = 256
# The context each window is read after: the conversation, or when it is longer than this,
# its latest user turn's tail (with the system prompt when that still fits).
CONTEXT_TOKENS = 384


@dataclass(frozen=True)
class AnswerRead:
    """One answer's tokens after its conversation's, and the segment ends the head reads."""

    prefix: tuple[int, ...]  # the conversation, through the assistant's generation prompt
    answer: tuple[int, ...]
    positions: tuple[int, ...]  # indices into ``answer``

    def key(self) -> str:
        """The sha256 the verdict cache keys a read on (``answer|`` starts no other key's text)."""
        raw = "answer|" + ",".join(map(str, self.prefix)) + "|" + ",".join(map(str, self.answer))
        return hashlib.sha256((raw + "|" + ",".join(map(str, self.positions))).encode()).hexdigest()


def answer_read(host: ModelHost, conv: Conversation, answer: str, enders: frozenset[int]) -> AnswerRead:
    """``answer`` as the reply to ``conv``, read whole (calibration's and the evaluation's answers)."""
    from steerguard.passages import segment_ends, text_ids

    ids = text_ids(host, answer)
    return AnswerRead(tuple(host.token_ids(conv)), tuple(ids), tuple(segment_ends(ids, enders)))


def answer_windows(
    host: ModelHost, conv: Conversation, answer_ids: Sequence[int], enders: frozenset[int]
) -> list[AnswerRead]:
    """An answer of any length as the classifier reads it: whole, or in overlapping windows.

    Cost is linear in its length: each token is read at most twice (4/3
    times on average), each window after at most :data:`CONTEXT_TOKENS` of context.
    """
    from steerguard.passages import segment_ends, split

    prefix = tuple(context_ids(host, conv))
    if len(answer_ids) <= ANSWER_WINDOW_TOKENS:
        return [AnswerRead(prefix, tuple(answer_ids), tuple(segment_ends(answer_ids, enders)))]
    windows = split(answer_ids, enders, ANSWER_WINDOW_TOKENS, WINDOW_OVERLAP_TOKENS)
    return [AnswerRead(prefix, w.ids, w.positions) for w in windows]


def context_ids(host: ModelHost, conv: Conversation) -> list[int]:
    """The tokens an answer is read after: ``conv`` through the generation prompt, bounded."""
    from steerguard.messages import Message
    from steerguard.model.chat import Conversation
    from steerguard.passages import text_ids

    ids = host.token_ids(conv)
    if len(ids) <= CONTEXT_TOKENS:
        return ids
    tail = host.tokenizer.decode(text_ids(host, conv.last_user_text)[-(CONTEXT_TOKENS // 2) :])
    system = tuple(m for m in conv.messages[:1] if m.role == "system")
    for messages in ((*system, Message("user", tail)), (Message("user", tail),)):
        ids = host.token_ids(Conversation(messages))
        if len(ids) <= CONTEXT_TOKENS:
            return ids
    return ids


def answer_features(
    host: ModelHost, reads: Sequence[AnswerRead], layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """{layer: [positions, 2H]} what the response head reads, in read order, then position order.

    Per segment end: the state at the end, then the mean state over the
    answer's last :data:`RECENT_TOKENS` tokens up to it (fewer at its start).
    """
    import torch

    from steerguard.model.activations import reduced_states

    batch = host.pad([list(r.prefix) + list(r.answer) for r in reads])
    width = batch.input_ids.shape[1]

    def gather(hidden: torch.Tensor) -> torch.Tensor:
        rows = []
        for i, r in enumerate(reads):
            start = width - len(r.answer)
            # total[j] sums the answer's states before j, in float64 so differences keep their digits
            total = torch.nn.functional.pad(hidden[i, start:].double().cumsum(dim=0), (0, 0, 1, 0))
            ends = torch.tensor(r.positions, dtype=torch.long)
            begins = (ends + 1 - RECENT_TOKENS).clamp(min=0)
            recent = (total[ends + 1] - total[begins]) / (ends + 1 - begins)[:, None].double()
            rows.append(torch.cat([hidden[i, start + ends], recent.to(hidden.dtype)], dim=1))
        return torch.cat(rows) if rows else hidden.new_zeros((0, 2 * hidden.shape[-1]))

    return reduced_states(host, batch, layers, reduce=gather)


def position_scores(
    host: ModelHost, bundle: Bundle, reads: Sequence[AnswerRead], *, batch_size: int = 16
) -> list[list[float]]:
    """Each answer's position scores under the bundle's response head (on the probe's scale)."""
    info = bundle.response
    if info is None:
        raise ValueError("the bundle has no response probe")
    out: list[list[float]] = [[] for _ in reads]
    order = sorted(range(len(reads)), key=lambda i: len(reads[i].prefix) + len(reads[i].answer))
    for start in range(0, len(order), batch_size):  # similar lengths together: less padding
        part = order[start : start + batch_size]
        states = answer_features(host, [reads[i] for i in part], [info.layer])[info.layer]
        values = bundle.response_score(states).tolist()
        for i in part:
            out[i] = values[: len(reads[i].positions)]
            values = values[len(reads[i].positions) :]
    return out
