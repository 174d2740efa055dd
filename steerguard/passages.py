"""Long texts read at every segment end: the passage probe.

Why: the probe reads one state, the last prompt token's, and that state
summarises the end of the prompt. A long text read in windows of 256-1,024
tokens hid a harmful request placed in the middle: on calibration data, a
probe refitted on such windows' last-token states separated the windows that
held one from those that did not with an AUROC of 0.61-0.66, at any layer;
the default probe caught 0 of 24 requests in the middle of a 1k-4k-token
document. The state *at the end of the request itself*, inside the text,
separates them: AUROC 0.985 at layer 13 on 1,262 segment ends of documents
built from calibration prompts (grouped 5-fold; see docs/evaluation.md).

So a text too long for one view is read as *passages*: windows of raw
text tokens (no chat framing), each read once up to the passage layer, and
the passage probe (``passage.*`` in the bundle) scores every segment end (a
token that holds ``.``, ``?``, ``!``, ``;``, ``:`` or a line break, and at
least every ``MAX_GAP`` tokens) by two states side by side: the state at the
end, and the mean of the states over the segment it ends. The end's state
carries what the text has said so far; the segment's mean carries what this
sentence says, which is what tells a request inside a benign document apart.
On the same calibration documents, grouped out of fold, at a cut that flags
at most 2% of ordinary 3k-token documents, the end state alone caught 57% of
the inserted requests at layer 13; end and mean side by side, 84% at layer
13 and 79% at layer 10 (docs/calibration.md). A passage's score is its
highest; each segment end is read in one window only, with at least the
overlap's worth of text before it (the first window's excepted). Calibration
shifts the passage head's bias so its cut is the probe's threshold: a
passage's score compares with any view's (:class:`~steerguard.manifest.PassageInfo`).

Cost is one forward pass per window up to the passage layer: linear in length.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # light at import: the views and the classifier's config read this module
    import torch

    from steerguard.model.host import ModelHost

# Text tokens per passage window, and the text read again at the start of the next one.
PASSAGE_TOKENS = 512
PASSAGE_OVERLAP = 64
# A text with no punctuation is still read at least this often.
MAX_GAP = 48
ENDERS = (".", "?", "!", ";", ":", "\n", "。", "？", "！")


@dataclass(frozen=True)
class Passage:
    """One window of raw text tokens and the indices whose states the passage probe reads."""

    ids: tuple[int, ...]
    positions: tuple[int, ...]
    starts: tuple[int, ...]  # where each position's segment begins in the window
    start: int = 0  # where the window starts in its text's tokens (calibration labels by it)

    def key(self) -> str:
        """The sha256 the verdict cache keys a passage on: its tokens and the segments read.

        The hashed text starts with ``passage|``, which no conversation digest hashes.
        """
        spans = ",".join(f"{a}-{b}" for a, b in zip(self.starts, self.positions, strict=True))
        raw = "passage|" + ",".join(map(str, self.ids)) + "|" + spans
        return hashlib.sha256(raw.encode()).hexdigest()


def ender_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of tokens whose text ends a segment (computed once per tokenizer)."""
    vocab = tokenizer.get_vocab()
    out = set()
    for _, i in vocab.items():
        text = tokenizer.decode([i])
        if any(e in text for e in ENDERS):
            out.add(int(i))
    return frozenset(out)


def segment_ends(ids: Sequence[int], enders: frozenset[int]) -> list[int]:
    """Indices of segment ends: ender tokens, one at least every ``MAX_GAP`` tokens, and the last."""
    out: list[int] = []
    last = -1
    for i, t in enumerate(ids):
        if t in enders or i - last >= MAX_GAP:
            out.append(i)
            last = i
    if ids and (not out or out[-1] != len(ids) - 1):
        out.append(len(ids) - 1)
    return out


def split(
    ids: Sequence[int],
    enders: frozenset[int],
    window: int = PASSAGE_TOKENS,
    overlap: int = PASSAGE_OVERLAP,
) -> list[Passage]:
    """Overlapping windows of ``ids``; every segment end read in exactly one of them.

    A segment end belongs to the last window that has at least ``overlap``
    tokens before it (the first window owns the text's start).
    """
    overlap = min(overlap, window // 2)
    step = window - overlap
    owned: dict[int, list[tuple[int, int]]] = {}
    begin = 0
    for e in segment_ends(ids, enders):
        k = max(0, (e - overlap) // step)
        owned.setdefault(k, []).append((max(0, begin - k * step), e - k * step))
        begin = e + 1
    return [
        Passage(
            tuple(ids[k * step : k * step + window]),
            tuple(e for _, e in spans),
            tuple(b for b, _ in spans),
            k * step,
        )
        for k, spans in sorted(owned.items())
    ]


def position_states(
    host: ModelHost, passages: Sequence[Passage], layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """{layer: [positions, 2H]} what the passage probe reads, in passage order.

    Per segment end: the state at the end, then the mean state over its
    segment (``starts[i]`` to ``positions[i]``, both included).
    """
    import torch

    from steerguard.model.activations import reduced_states

    batch = host.pad([list(p.ids) for p in passages])
    width = batch.input_ids.shape[1]
    real = batch.attention_mask.to(torch.float64)[..., None]  # left padding adds nothing to a mean
    rows = [i for i, p in enumerate(passages) for _ in p.positions]
    ends = [width - len(p.ids) + q for p in passages for q in p.positions]
    begins = [width - len(p.ids) + b for p in passages for b in p.starts]

    def gather(hidden: torch.Tensor) -> torch.Tensor:
        # total[:, j] sums the states before j, in float64 so differences keep their digits
        total = torch.nn.functional.pad(
            (hidden.double() * real.to(hidden.device)).cumsum(dim=1), (0, 0, 1, 0)
        )
        sums = total[rows, [e + 1 for e in ends], :] - total[rows, begins, :]
        counts = torch.tensor([e + 1 - b for b, e in zip(begins, ends, strict=True)], dtype=torch.float64)
        means = (sums / counts[:, None].to(sums.device)).to(hidden.dtype)
        return torch.cat([hidden[rows, ends, :], means], dim=1)

    return reduced_states(host, batch, layers, reduce=gather)


def passage_features(host: ModelHost, passages: Sequence[Passage], layers: Sequence[int]) -> torch.Tensor:
    """``[positions, 2H × len(layers)]``: :func:`position_states` of ``layers`` side by side, in order."""
    import torch

    states = position_states(host, passages, layers)
    return torch.cat([states[layer] for layer in layers], dim=1)


def passage_scores(
    host: ModelHost,
    score: Callable[[torch.Tensor], torch.Tensor],
    layers: Sequence[int],
    passages: Sequence[Passage],
) -> list[float]:
    """Each passage's highest segment-end score under ``score`` (the bundle's passage head on ``layers``)."""
    if not passages:
        return []
    values = score(passage_features(host, passages, layers))
    out: list[float] = []
    at = 0
    for p in passages:
        out.append(float(values[at : at + len(p.positions)].max()))
        at += len(p.positions)
    return out


def text_ids(host: ModelHost, text: str) -> list[int]:
    """``text``'s raw tokens, chat-template tokens typed into it made plain (as the views read it)."""
    from steerguard.messages import Message
    from steerguard.model.chat import Conversation, neutralise

    plain = neutralise(Conversation((Message("user", text),)), host.special_tokens).messages[0].content
    return [int(i) for i in host.tokenizer(plain, add_special_tokens=False)["input_ids"]]
