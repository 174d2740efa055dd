"""Answers judged as they are written: the response probe.

Why: the prompt probe reads the state after a *request*; judging an answer
with it, the answer put in a user turn, asks it a question it was never
fitted on. The response probe reads states *inside* the answer, in the
conversation's real chat framing: the conversation's tokens up to the
assistant's generation prompt, then the answer's tokens (chat-template
tokens typed into it made plain text, as everywhere). At every segment end of
the answer (:func:`steerguard.passages.segment_ends`: punctuation, line
breaks, at least every ``MAX_GAP`` tokens, and the answer's last token) it
reads three states side by side: the state at the end, which carries the
conversation and what the answer has said so far; the mean state of the
answer's last :data:`RECENT_TOKENS` tokens, which carries what it says now;
and the state at the context's last token (the generation prompt), which
carries what was asked. Two logistic heads score them (``response.*`` and,
in bundles that have it, ``response_content.*``): the *compliance* head
learns "the model went along with a harmful request", the *content* head
"this answer is harmful whatever it was asked". An answer is unsafe as soon
as one position reaches either head's cut (each head's bias puts its cut at
the probe's threshold, and a position's score is the higher of the two), so
a stream is judged at each segment end it reaches, and an answer's score is
its highest.

Why two heads (calibration pairs, docs/calibration.md): without the
context's state a head caught 56% of compliant answers to harmful requests
at 2% of safe answers flagged; with it, 79%, but it then caught almost no
harmful answer placed after an innocent request (2%): it had learned the
request, not the answer. A head fitted also on such transplanted answers
catches them but fewer compliant ones; the two heads together keep most of
both at one false-flag budget (80% and 84% out of fold). Bundles fitted
before carry one head on the first two states (``FEATURES_V1``); each head
reads the leading columns it was fitted on, so they are served unchanged.

An answer in a chat with earlier turns is read, in bundles whose response
view is ``request`` (:class:`AnswerView`), after the request it replies to:
the latest user turn that is not a follow-up, its system prompt, and what the
assistant already said since, read first and not scored. Bundles from before
(view ``chat``) read it in its chat, where some hold a second pair of heads
for such answers (``response_turns.*``): fitted on single turns only, the
first pair flagged 28% of benign answers continued after "Go on."-style
follow-ups read in their chat, and the second pair caught only half of the
complied ones (docs/calibration.md, *Follow-up turns in answers*). What is
a follow-up is a closed-vocabulary rule; where the bundle says so
(``short_turns``), a short turn it does not take is read both ways and the
answer flagged only where both readings flag (:func:`answer_readings`).

A position needs only its last :data:`RECENT_TOKENS` tokens and the
context besides the model's own state, so an answer can be read in
overlapping windows (:data:`ANSWER_WINDOW_TOKENS`, :data:`WINDOW_OVERLAP_TOKENS`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

# What the heads read at each segment end, named beside the manifest's ResponseInfo.
from steerguard.manifest import FEATURES as FEATURES
from steerguard.manifest import FEATURES_V1 as FEATURES_V1
from steerguard.manifest import SHORT_TURNS_BOTH, VIEW_CHAT, VIEW_REQUEST

if TYPE_CHECKING:  # light at import: the sidecar and the classifier's config read this module
    import torch

    from steerguard.bundle import Bundle
    from steerguard.manifest import ResponseInfo
    from steerguard.model.chat import Conversation
    from steerguard.model.host import ModelHost

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
# What the assistant said earlier to the request, read before the answer (not scored):
# its last tokens, as many as a window's overlap, after the same lead-in.
LEAD_SEPARATOR = "\n\n"
LEAD_TOKENS = WINDOW_OVERLAP_TOKENS


@dataclass(frozen=True)
class AnswerRead:
    """One answer's tokens after its conversation's, and the segment ends the head reads."""

    prefix: tuple[int, ...]  # the conversation, through the assistant's generation prompt
    answer: tuple[int, ...]
    positions: tuple[int, ...]  # indices into ``answer``
    multi_turn: bool = False  # the conversation has earlier turns (:func:`has_earlier_turns`)

    def key(self) -> str:
        """The sha256 the verdict cache keys a read on (``answer|`` starts no other key's text)."""
        raw = "answer|" + ",".join(map(str, self.prefix)) + "|" + ",".join(map(str, self.answer))
        raw += "|" + ",".join(map(str, self.positions)) + ("|turns" if self.multi_turn else "")
        return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class AnswerView:
    """What an answer is read after, in a bundle whose response view is ``request``.

    ``conv``: the system messages and the request the answer replies to: the
    latest user turn that is not a follow-up (:func:`steerguard.follow_up.is_follow_up`), earlier
    turns dropped. ``lead``: what the assistant already said after that
    request (its turns there, joined), read before the answer as the start of
    one longer reply, its positions not scored; "" when the last user turn is
    the request. Why: on calibration pairs, heads fitted on single turns
    flagged 28% of benign answers continued after "Go on."-style turns read in
    their chat, while the same answers read after the request they continue
    were judged like single-turn answers (docs/calibration.md, *Follow-up
    turns in answers*).
    """

    conv: Conversation
    lead: str = ""

    def text(self, answer: str) -> str:
        """The reply as read: the lead, then ``answer``."""
        return self.lead + LEAD_SEPARATOR + answer if self.lead else answer


# User turns (message indices) taken for a follow-up (True) or a request (False) whatever the
# follow-up rule says; the rest as it says (steerguard.follow_up.is_follow_up).
Turns = Mapping[int, bool]


def answer_view(host: ModelHost, conv: Conversation, taken: Turns | None = None) -> AnswerView:
    """The request ``conv``'s answer replies to and the assistant's lead (:class:`AnswerView`).

    ``taken``: turns read otherwise than the rule says (:func:`answer_readings`).
    """
    from steerguard.model.chat import Conversation
    from steerguard.passages import text_ids

    messages = conv.messages
    at = _request_turn(conv, taken or {})
    system = tuple(m for m in messages[:at] if m.role == "system")
    lead = LEAD_SEPARATOR.join(m.content for m in messages[at + 1 :] if m.role == "assistant" and m.content)
    ids = text_ids(host, lead) if lead else []
    if len(ids) > LEAD_TOKENS:
        lead = host.tokenizer.decode(ids[-LEAD_TOKENS:])
    return AnswerView(Conversation((*system, messages[at])), lead)


def _request_turn(conv: Conversation, taken: Turns) -> int:
    """The message index of the latest user turn that is not a follow-up to an answer before it."""
    from steerguard.follow_up import is_follow_up

    messages = conv.messages
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    at = users[-1]
    for i in reversed(users):
        at = i
        answered = _answered(conv, i)
        if not (answered and taken.get(i, is_follow_up(messages[i].content))):
            break
    return at


def _answered(conv: Conversation, turn: int) -> bool:
    return any(m.role == "assistant" for m in conv.messages[:turn])


def last_turn(conv: Conversation, follow_up: bool) -> Turns:
    """The last user turn taken for a follow-up or a request, whatever the rule says
    (calibration and the evaluation read continued answers both ways with it)."""
    return {max(i for i, m in enumerate(conv.messages) if m.role == "user"): follow_up}


def answer_readings(conv: Conversation, info: ResponseInfo | None) -> tuple[Turns, ...]:
    """How an answer to ``conv`` is read: each entry a ``taken`` for :func:`answer_view`.

    Once, as the follow-up rule says (``({},)``); or, in a bundle whose
    ``short_turns`` is ``both``, where the rule's request is a short turn
    after an answer (:func:`steerguard.follow_up.is_short`), the rule having
    not taken it for a follow-up, twice: with it as the request, and with it
    taken for a follow-up (``({}, {turn: True})``); the answer is flagged only
    where both readings flag. Why: the rule is a
    closed vocabulary, and a follow-up phrased outside it ("Hmm, interesting.
    More?") made the continuation's request: on calibration pairs, were the rule
    to miss every phrase, benign continuations read that way were flagged
    26.5% of the time, 1.8% when both readings must flag (complied ones
    caught: 60% and 50%), while short new questions the rule does not take
    were judged the same either way (docs/calibration.md).
    """
    from steerguard.follow_up import is_short

    if info is None or info.view != VIEW_REQUEST or info.short_turns != SHORT_TURNS_BOTH:
        return ({},)
    at = _request_turn(conv, {})
    if _answered(conv, at) and is_short(conv.messages[at].content):
        return ({}, {at: True})
    return ({},)


@dataclass(frozen=True)
class Reply:
    """An answer's tokens as the response probe reads them, and the conversation it is read after."""

    conv: Conversation
    ids: list[int]
    skip: int = 0  # the lead's tokens: read, never scored
    lead: str = ""  # their text (:meth:`AnswerView.text` of nothing)

    @property
    def answer_tokens(self) -> int:
        return len(self.ids) - self.skip

    def scored(self, ends: Sequence[int]) -> tuple[int, ...]:
        """The segment ends past the lead; the last token where none is (an answer such as a
        line break can merge into the lead's last token): every answer is scored somewhere."""
        kept = tuple(e for e in ends if e >= self.skip)
        return kept or tuple(ends[-1:])


def reply(
    host: ModelHost, conv: Conversation, answer: str, view: str | None, taken: Turns | None = None
) -> Reply:
    """``answer`` to ``conv`` in the bundle's response ``view`` (``chat``, ``None``: as sent),
    the user turns ``taken`` read as it says (:func:`answer_view`)."""
    from steerguard.passages import text_ids

    if view != VIEW_REQUEST:
        return Reply(conv, text_ids(host, answer))
    seen = answer_view(host, conv, taken)
    lead = seen.text("") if seen.lead else ""
    return Reply(seen.conv, text_ids(host, seen.text(answer)), len(text_ids(host, lead)) if lead else 0, lead)


def answer_read(
    host: ModelHost,
    conv: Conversation,
    answer: str,
    enders: frozenset[int],
    view: str | None = VIEW_CHAT,
    taken: Turns | None = None,
) -> AnswerRead:
    """``answer`` as the reply to ``conv``, read whole (calibration's and the evaluation's answers)."""
    from steerguard.passages import segment_ends

    got = reply(host, conv, answer, view, taken)
    ends = got.scored(segment_ends(got.ids, enders))
    return AnswerRead(tuple(host.token_ids(got.conv)), tuple(got.ids), ends, has_earlier_turns(got.conv))


def has_earlier_turns(conv: Conversation) -> bool:
    """Whether ``conv`` holds more than its last user turn (system messages aside).

    Such answers are judged by the heads fitted for conversations with earlier
    turns (:meth:`Bundle.response_score`), also when their context is cut to
    the last turn (:func:`context_ids`): the answer still continues a chat.
    """
    return sum(m.role != "system" for m in conv.messages) > 1


def answer_windows(host: ModelHost, got: Reply, enders: frozenset[int]) -> list[AnswerRead]:
    """An answer of any length as the classifier reads it: whole, or in overlapping windows.

    Cost is linear in its length: each token is read at most twice (4/3
    times on average), each window after at most :data:`CONTEXT_TOKENS` of context.
    """
    from steerguard.passages import segment_ends, split

    prefix, turns, ids = tuple(context_ids(host, got.conv)), has_earlier_turns(got.conv), got.ids
    if len(ids) <= ANSWER_WINDOW_TOKENS:
        return [AnswerRead(prefix, tuple(ids), got.scored(segment_ends(ids, enders)), turns)]
    windows = split(ids, enders, ANSWER_WINDOW_TOKENS, WINDOW_OVERLAP_TOKENS)
    reads = [
        AnswerRead(prefix, w.ids, tuple(p for p in w.positions if w.start + p >= got.skip), turns)
        for w in windows
    ]
    return [r for r in reads if r.positions]


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
    """{layer: [positions, 3H]} what the response heads read, in read order, then position order.

    Per segment end: the state at the end, the mean state over the answer's
    last :data:`RECENT_TOKENS` tokens up to it (fewer at its start), and the
    state at the context's last token (:func:`position_features`).
    """
    import torch

    from steerguard.model.activations import reduced_states

    batch = host.pad([list(r.prefix) + list(r.answer) for r in reads])
    width = batch.input_ids.shape[1]

    def gather(hidden: torch.Tensor) -> torch.Tensor:
        rows = []
        for i, r in enumerate(reads):
            start = width - len(r.answer)
            rows.append(position_features(hidden[i, start:], hidden[i, start - 1], r.positions))
        return torch.cat(rows) if rows else hidden.new_zeros((0, 3 * hidden.shape[-1]))

    return reduced_states(host, batch, layers, reduce=gather)


def position_features(answer: torch.Tensor, context_end: torch.Tensor, ends: Sequence[int]) -> torch.Tensor:
    """``[len(ends), 3H]``: per segment end, its state, the recent mean up to it, the context's end.

    ``answer``: the answer's states ``[T, H]`` (a window's, in a stream);
    ``context_end``: the state at the context's last token ``[H]``.
    """
    import torch

    # total[j] sums the answer's states before j, in float64 so differences keep their digits
    total = torch.nn.functional.pad(answer.double().cumsum(dim=0), (0, 0, 1, 0))
    at = torch.tensor(list(ends), dtype=torch.long)
    begins = (at + 1 - RECENT_TOKENS).clamp(min=0)
    recent = (total[at + 1] - total[begins]) / (at + 1 - begins)[:, None].double()
    context = context_end.reshape(1, -1).expand(len(at), -1)
    return torch.cat([answer[at], recent.to(answer.dtype), context.to(answer.dtype)], dim=1)


def position_scores(
    host: ModelHost,
    bundle: Bundle,
    reads: Sequence[AnswerRead],
    *,
    batch_size: int = 16,
    content_only: bool = False,
) -> list[list[float]]:
    """Each answer's position scores under the bundle's response heads (on the probe's scale).

    ``content_only``: the content head's alone (:meth:`Bundle.response_score`).
    """
    info = bundle.response
    if info is None:
        raise ValueError("the bundle has no response probe")
    out: list[list[float]] = [[] for _ in reads]
    order = sorted(range(len(reads)), key=lambda i: len(reads[i].prefix) + len(reads[i].answer))
    for start in range(0, len(order), batch_size):  # similar lengths together: less padding
        part = order[start : start + batch_size]
        states = answer_features(host, [reads[i] for i in part], [info.layer])[info.layer]
        values = _scores(bundle, states, [reads[i] for i in part], content_only)
        for i in part:
            out[i] = values[: len(reads[i].positions)]
            values = values[len(reads[i].positions) :]
    return out


def _scores(
    bundle: Bundle, states: torch.Tensor, reads: Sequence[AnswerRead], content_only: bool
) -> list[float]:
    """Every position's score in read order, each read under the heads its conversation's shape takes."""
    import torch

    turns = torch.tensor([r.multi_turn for r in reads for _ in r.positions], dtype=torch.bool)
    out = bundle.response_score(states, content_only=content_only)
    if turns.any():
        later = bundle.response_score(states, content_only=content_only, multi_turn=True)
        out = torch.where(turns, later, out)
    return [float(v) for v in out]
