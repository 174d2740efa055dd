"""Conversations of any length, judged as the views the probe can read.

The probe reads one state, the last prompt token's, of a prompt that fits the
model's window (``max_prompt_tokens``). A real request can be a pasted
document or a long chat, and padding a harmful request with filler must not
hide it. So a conversation becomes several *views*, each a conversation that
fits, each read with the chat framing (the system prompt kept, the text in a
user turn); the request's verdict is the view with the highest score (any
unsafe view makes the request unsafe):

- in a chat (more than one user-side turn), every user-side turn on its own
  after the system prompt: the probe was calibrated on single requests, and a
  chat read whole shifted its cut (a harmful request after a benign history
  was caught 82% of the time, read alone 99%, on calibration data). So a
  harmful request followed by "please answer my previous question", or by
  filler turns, is still judged as a request; the views repeat turn for turn
  across a chat's requests, so the verdict cache answers them after the
  first time;
- a text too long for one view (a single request, a turn, a system
  prompt): with a bundle that has a passage probe, its *passages*, every
  segment end read by the passage probe in the text before it
  (:mod:`steerguard.passages`), so a request anywhere in the text, its end
  included, is judged in context as the chatbot reads it; without one,
  overlapping windows of tokens, each after the system prompt. No part of a
  long text is read alone by the request probe: it reads a paragraph of
  plain prose as a request and flags it (the last paragraph of a budget
  report scored 0.86, cut 0.315), so a pasted document that ends without a
  question was blocked (docs/known-limits.md);
- every reading of a turn that an encoding hides (base64, rot13, reversed
  text, leetspeak; :mod:`steerguard.decoding`), on its own.

Cost grows linearly with length: each token is read in at most two windows.
:class:`ViewPlan` holds both kinds of view; :meth:`Windower.views` lists the
chat-framed ones only.
Past ``max_total_tokens`` a conversation is refused as too long
(:class:`steerguard.errors.TooLong`, gRPC ``OUT_OF_RANGE``), before the
tokenizer runs when its byte length already says so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from steerguard.decoding import readings
from steerguard.errors import TooLong
from steerguard.messages import Message
from steerguard.model.chat import Conversation
from steerguard.passages import Passage
from steerguard.passages import split as split_passages
from steerguard.responses import AnswerRead

# A view is never read whole without at least this many tokens of room for its text.
MIN_WINDOW_TOKENS = 32
# The defaults of the classifier's CoreConfig and of the evaluation, stated here once.
MAX_TOTAL_TOKENS = 32768
OVERLAP_TOKENS = 64
# Readings judged per turn (a text rarely reads as language under more than one encoding).
MAX_READINGS = 2


@dataclass(frozen=True)
class WindowSettings:
    max_prompt_tokens: int
    max_total_tokens: int
    overlap_tokens: int
    # Tokens the chat framing adds around the text of one view (template, system prompt, roles).
    framing_tokens: int
    # A token covers at most this many UTF-8 bytes: a cheap lower bound on tokens from bytes.
    max_token_bytes: int


@dataclass(frozen=True)
class PassageReader:
    """How this model's passages are cut (from the bundle's passage probe)."""

    window_tokens: int
    overlap_tokens: int
    enders: frozenset[int]
    # Raw text tokens, typed template tokens made plain (steerguard.passages.text_ids).
    text_ids: Callable[[str], list[int]]
    # Newline ids and the longest candidate, where the bundle has a passage gate (else None).
    candidates: tuple[frozenset[int], int] | None = None


@dataclass
class ViewPlan:
    """A conversation's views: chat-framed conversations for the probe, passages for the passage probe."""

    read: list[Conversation] = field(default_factory=list)
    passages: list[Passage] = field(default_factory=list)
    # An answer's windows, each read by the response probe (steerguard.responses).
    answers: list[AnswerRead] = field(default_factory=list)
    # Where an answer is read more than one way (steerguard.responses.answer_readings): how many
    # of ``answers`` each reading holds, in order; empty: one reading.
    readings: tuple[int, ...] = ()

    def extend(self, other: ViewPlan) -> None:
        if self.readings or other.readings:
            raise ValueError("an answer read several ways is a plan of its own")
        self.read.extend(other.read)
        self.passages.extend(other.passages)
        self.answers.extend(other.answers)

    def pick(self, scores: Sequence[float]) -> int:
        """Which view's verdict is the plan's, given every view's score in plan order.

        The highest-scoring view's; for an answer read several ways, the
        lowest of the readings' highest: it is flagged only where every
        reading flags.
        """
        if len(self.readings) < 2:
            return max(range(len(scores)), key=scores.__getitem__)
        if len(scores) != sum(self.readings) or self.read or self.passages:
            raise ValueError("an answer's readings must be its plan's only views")
        tops, start = [], 0
        for n in self.readings:
            tops.append(max(range(start, start + n), key=scores.__getitem__))
            start += n
        return min(tops, key=scores.__getitem__)


class Windower:
    """Splits a conversation into views that fit (see the module docstring)."""

    @classmethod
    def for_host(
        cls,
        host: Any,
        max_prompt_tokens: int,
        max_total_tokens: int = MAX_TOTAL_TOKENS,
        overlap_tokens: int = OVERLAP_TOKENS,
        passage: Any | None = None,
        *,
        candidates: bool = True,
    ) -> Windower:
        """Views sized to ``host``'s tokenizer and chat template (a :class:`ModelHost`).

        ``passage``: the bundle's :class:`~steerguard.manifest.PassageInfo`, or None;
        ``candidates``: False reads no passage candidate again, whatever the bundle holds.
        """
        from steerguard.model.chat import normalise_request
        from steerguard.passages import ender_ids, newline_ids, text_ids

        tok = host.tokenizer
        settings = WindowSettings(
            max_prompt_tokens=max_prompt_tokens,
            max_total_tokens=max_total_tokens,
            overlap_tokens=overlap_tokens,
            framing_tokens=len(host.token_ids(normalise_request("x"))) + 8,
            max_token_bytes=max(1, max(len(t) for t in tok.get_vocab())),
        )
        reader = None
        if passage is not None:
            gate = candidates and passage.gate_cut is not None and passage.candidate_tokens
            reader = PassageReader(
                passage.window_tokens,
                passage.overlap_tokens,
                ender_ids(tok),
                lambda t: text_ids(host, t),
                (newline_ids(tok), passage.candidate_tokens) if gate else None,
            )
        return cls(
            settings,
            count=lambda conv: len(host.token_ids(conv)),
            tokenize_text=lambda text: [int(i) for i in tok(text, add_special_tokens=False)["input_ids"]],
            detokenize=lambda ids: str(tok.decode(ids)),
            passages=reader,
        )

    def __init__(
        self,
        settings: WindowSettings,
        count: Callable[[Conversation], int],
        tokenize_text: Callable[[str], list[int]],
        detokenize: Callable[[list[int]], str],
        passages: PassageReader | None = None,
    ) -> None:
        self.s = settings
        self._count = count
        # A long text is tokenised for the size check, its room and its windows: once is enough.
        self._tokens = functools.lru_cache(maxsize=16)(tokenize_text)
        self._text = detokenize
        self.passages = passages
        self.window = max(MIN_WINDOW_TOKENS, settings.max_prompt_tokens - settings.framing_tokens)

    def fits_surely(self, conv: Conversation, limit: int | None = None) -> bool:
        """True when the conversation fits without tokenising it (a token covers at least one byte)."""
        size = sum(len(m.content.encode("utf-8")) + 8 for m in conv.messages)
        return size + self.s.framing_tokens <= (self.s.max_prompt_tokens if limit is None else limit)

    def _fits(self, conv: Conversation, limit: int | None = None) -> bool:
        cap = self.s.max_prompt_tokens if limit is None else limit
        return self.fits_surely(conv, cap) or self._count(conv) <= cap

    def views(self, conv: Conversation) -> list[Conversation]:
        """The chat-framed views only (see :meth:`plan` for the passages too)."""
        return self.plan(conv).read

    def plan(self, conv: Conversation) -> ViewPlan:
        self._refuse_oversize(conv)
        system, turns = _split_system(conv)
        out = ViewPlan()
        whole_system = system is None or self._fits(Conversation((system,)), self.window // 2)
        if system is not None and not whole_system:
            # A system prompt too long to frame every view: judged on its own, in windows, and
            # cut to its first half-window of tokens where it frames the others.
            out.extend(self._alone(None, system.content, whole=False))
            system = Message("system", self._text(self._tokens(system.content)[: self.window // 2]))
        out.extend(self._decoded(system, turns if whole_system else [conv.messages[0], *turns]))
        if len([m for m in turns if m.role == "user"]) > 1:
            # A chat: every user-side turn read on its own, as the probe was calibrated to read
            # requests (a chat read whole shifted its cut; see docs/evaluation.md, shapes).
            for turn in turns:
                if turn.role == "user" and turn.content.strip():
                    out.extend(self._alone(system, turn.content))
            return out
        if whole_system and self._fits(conv):
            return ViewPlan([conv, *out.read], out.passages)
        last = self._alone(system, turns[-1].content)
        last.extend(out)
        return last

    def _decoded(self, system: Message | None, turns: Sequence[Message]) -> ViewPlan:
        """Each user-side turn's readings under an encoding, each judged on its own."""
        out = ViewPlan()
        for turn in turns:
            if turn.role == "assistant":
                continue
            for reading in readings(turn.content)[:MAX_READINGS]:
                out.extend(self._alone(system, reading))
        return out

    def _refuse_oversize(self, conv: Conversation) -> None:
        limit = self.s.max_total_tokens
        size = sum(len(m.content.encode("utf-8")) for m in conv.messages)
        if size > limit * self.s.max_token_bytes:
            raise TooLong(f"the conversation is over the limit of {limit} tokens")
        if size > limit and sum(len(self._tokens(m.content)) for m in conv.messages) > limit:
            raise TooLong(f"the conversation is over the limit of {limit} tokens")

    def _room(self, system: Message | None) -> int:
        """Tokens left for a view's text after the framing and the system prompt."""
        taken = len(self._tokens(system.content)) if system is not None else 0
        return max(MIN_WINDOW_TOKENS, self.window - taken)

    def _alone(self, system: Message | None, text: str, *, whole: bool = True) -> ViewPlan:
        """``text`` as a user turn after the system prompt: whole when it fits, else as a long text."""
        head = (system,) if system is not None else ()
        one = Conversation((*head, Message("user", text)))
        if whole and self._fits(one):
            return ViewPlan([one])
        reader = self.passages
        if reader is None:
            chunks = self._chunks(text, self._room(system))
            return ViewPlan([Conversation((*head, Message("user", c))) for c in chunks])
        ids = reader.text_ids(text)
        return ViewPlan(
            [],
            split_passages(
                ids, reader.enders, reader.window_tokens, reader.overlap_tokens, reader.candidates
            ),
        )

    def _chunks(self, text: str, room: int) -> list[str]:
        """Overlapping windows of ``text``, ``room`` tokens each, decoded back to text."""
        ids = self._tokens(text)
        overlap = min(self.s.overlap_tokens, room // 2)
        step = max(1, room - overlap)
        starts = range(0, max(1, len(ids) - overlap), step)
        chunks = [self._text(ids[i : i + room]) for i in starts]
        return [c for c in chunks if c.strip()] or [text[:1] or " "]


def _split_system(conv: Conversation) -> tuple[Message | None, list[Message]]:
    """The first system message (kept in every view) and the other turns, in order.

    Other system messages are turns like any other, judged on their own as
    user-side text.
    """
    messages = list(conv.messages)
    system = messages[0] if messages and messages[0].role == "system" else None
    turns = messages[1:] if system is not None else messages
    return system, [Message("user", m.content) if m.role == "system" else m for m in turns]
