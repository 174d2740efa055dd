"""One answer judged as it streams in, its keys and values kept between chunks.

Why: a streamed answer is judged many times as it grows (every hold-back
window the sidecar fills). Re-reading the context and the whole answer at
every check costs the square of the answer's length; even reading its last
512-token window afresh costs each check the window's length. A stream keeps
the key/value cache of everything it has read, up to the response layer
only, so each check reads just the tokens that arrived since the last one.

What it reads is what :func:`steerguard.responses.answer_windows` reads:
the conversation's context (:func:`~steerguard.responses.context_ids`), then
the answer in windows of :data:`~steerguard.responses.ANSWER_WINDOW_TOKENS`
that overlap by :data:`~steerguard.responses.WINDOW_OVERLAP_TOKENS`. When a
window is full, the cache is cut back to the context and the next window
starts with the last ``WINDOW_OVERLAP_TOKENS`` tokens of the one before, so memory per
stream is bounded (context + one window) whatever the answer's length.

Tokens: the text of the current window is tokenised again at every check
(bounded by the window), and the cache is cut back to where the new tokens
first differ from those read (text appended to a word can change its last
token), so the states always equal those of a plain forward pass over the
same tokens. Every segment end is scored once, and the answer's last token
at every check too: the stream's score is the highest so far (an answer once
unsafe stays unsafe). In a bundle whose response view is ``request``, the
window's text starts with the assistant's lead (:func:`~steerguard.responses.answer_view`),
whose positions are never scored. An answer read two ways
(:func:`~steerguard.responses.answer_readings`) is two streams, one per reading.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch

from steerguard.bundle import Bundle
from steerguard.model.chat import Conversation, neutralise
from steerguard.model.hooks import StopForward, layer_hooks
from steerguard.model.host import ModelHost
from steerguard.model.kv import cache_kwargs, crop
from steerguard.passages import MAX_GAP
from steerguard.responses import (
    ANSWER_WINDOW_TOKENS,
    WINDOW_OVERLAP_TOKENS,
    Turns,
    context_ids,
    has_earlier_turns,
    position_features,
    reply,
)


@dataclass(frozen=True)
class Locks:
    """The serving core's locks: the tokenizer and the model are each used by one thread at a time.

    The model's lock matters beyond speed: layer hooks are registered on the
    shared modules, so two forward passes at once would read each other's layers.
    """

    tokenizer: threading.Lock
    model: threading.Lock


class AnswerStream:
    """The answer to one conversation, read chunk by chunk under the bundle's response probe."""

    def __init__(
        self,
        host: ModelHost,
        bundle: Bundle,
        conv: Conversation,
        enders: frozenset[int],
        locks: Locks,
        taken: Turns | None = None,  # one of steerguard.responses.answer_readings
    ) -> None:
        if bundle.response is None:
            raise ValueError("an answer stream needs a bundle with a response probe")
        self.host, self.bundle, self.locks = host, bundle, locks
        self.layer = bundle.response.layer
        self.enders = enders
        with locks.tokenizer:
            start = reply(host, conv, "", bundle.response.view, taken)  # the view, and its lead
            self.prefix = context_ids(host, start.conv)
        self.multi_turn = has_earlier_turns(start.conv)  # which response heads judge it
        self.score = 0.0
        self.tokens_read = 0  # answer tokens run through the model, overlaps and re-reads included
        self.windows = 1
        self._text = start.lead  # the current window's text: a lead is read, never scored
        self._ids: list[int] = []  # the current window's tokens read so far
        self._states = torch.empty((0, host.identity.hidden_size))
        self._first = 0  # positions before this were scored in the window before (or are the lead)
        self._last_end = -1  # the last segment end before ``_first`` (window coordinates)
        self._lead = start.skip  # the lead's tokens at the first window's start
        if start.skip:
            self._last_end = ([-1] + self._ends(start.ids[: start.skip], final=False))[-1]
            self._first = start.skip
        from transformers import DynamicCache

        self._cache = DynamicCache()
        self._context_end = self._forward(self.prefix, 0)[-1]  # what every position reads beside its own

    def feed(self, text: str) -> float:
        """Read the answer's next ``text``; the highest score of the answer so far."""
        self._text += text
        ids, ends = self._tokens(self._text)
        while len(ids) > ANSWER_WINDOW_TOKENS:
            self._read(ids[:ANSWER_WINDOW_TOKENS], final=False)
            self._text = self._text[ends[ANSWER_WINDOW_TOKENS - WINDOW_OVERLAP_TOKENS - 1] :]
            self._roll()
            ids, ends = self._tokens(self._text)
        self._read(ids, final=True)
        return self.score

    def _tokens(self, text: str) -> tuple[list[int], list[int]]:
        """``text``'s tokens (as :func:`steerguard.passages.text_ids`) and where each ends in it.

        The window's text is kept in its plain form, so character offsets stay valid.
        """
        from steerguard.messages import Message

        plain = neutralise(Conversation((Message("user", text),)), self.host.special_tokens).messages[0]
        self._text = plain.content
        with self.locks.tokenizer:
            enc = self.host.tokenizer(plain.content, add_special_tokens=False, return_offsets_mapping=True)
        return [int(i) for i in enc["input_ids"]], [int(end) for _, end in enc["offset_mapping"]]

    def _roll(self) -> None:
        """Start the next window: the cache back to the context, the overlap read again.

        The new window starts ``WINDOW_OVERLAP_TOKENS`` before the old one's end, so its
        first new position is the one after the old window's last.
        """
        ends = self._ends(self._ids, final=False)
        shift = ANSWER_WINDOW_TOKENS - WINDOW_OVERLAP_TOKENS
        self._last_end = (ends[-1] if ends else self._last_end) - shift
        crop(self._cache, len(self.prefix))
        self._ids, self._states = [], self._states[:0]
        self._first = WINDOW_OVERLAP_TOKENS
        self.windows += 1

    def _ends(self, ids: list[int], *, final: bool) -> list[int]:
        """The window's segment ends from ``_first`` on, as :func:`~steerguard.passages.segment_ends`
        finds them in the whole answer; with ``final``, the last token too."""
        out: list[int] = []
        last = self._last_end
        for i in range(self._first, len(ids)):
            if ids[i] in self.enders or i - last >= MAX_GAP:
                out.append(i)
                last = i
        # An answer that merges into the lead's last token is scored there, as Reply.scored does.
        past = len(ids) > self._first or (self.windows == 1 and self._lead > 0 and not out)
        if final and ids and past and (not out or out[-1] != len(ids) - 1):
            out.append(len(ids) - 1)
        return out

    def _read(self, ids: list[int], *, final: bool) -> None:
        """Bring the window to ``ids`` (reading only what changed) and score its new positions."""
        same = 0
        for a, b in zip(self._ids, ids, strict=False):
            if a != b:
                break
            same += 1
        if same < len(self._ids):
            crop(self._cache, len(self.prefix) + same)
            self._states = self._states[:same]
        if len(ids) > same:
            new = self._forward(ids[same:], len(self.prefix) + same)
            self._states = torch.cat([self._states, new])
            self.tokens_read += len(ids) - same
        self._ids = list(ids)
        ends = [e for e in self._ends(ids, final=final) if e >= same]
        if ends:
            self.score = max(self.score, max(self._scores(ends)))

    def _scores(self, ends: list[int]) -> list[float]:
        features = position_features(self._states, self._context_end, ends)
        return [float(s) for s in self.bundle.response_score(features, multi_turn=self.multi_turn)]

    @torch.inference_mode()
    def _forward(self, ids: list[int], start: int) -> torch.Tensor:
        """Response-layer states ``[len(ids), H]`` of ``ids`` read after the cache's ``start`` positions."""
        found: dict[str, torch.Tensor] = {}

        def read(hidden: torch.Tensor) -> None:
            found["states"] = hidden[0].detach().float().clone()
            raise StopForward

        model = self.host.model.model
        with (
            self.locks.model,
            layer_hooks(self.host.layers, {self.layer: read}),
            contextlib.suppress(StopForward),
        ):
            model(
                input_ids=torch.tensor([ids], dtype=torch.long),
                position_ids=torch.arange(start, start + len(ids))[None],
                use_cache=True,
                **cache_kwargs(model, self._cache),
            )
        return found["states"]
