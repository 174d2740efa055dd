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

*Candidates* (bundles with a passage gate, ``passage.gate_cut``): the passage
head reads layers 6-10 and misses requests the request probe (layer 18)
catches at once when they stand alone. So each passage's top segment end
(when its score reaches ``passage.candidate_floor``) and the text's last
paragraph are read again as a lone user turn: the paragraph that ends there,
at most ``passage.candidate_tokens`` tokens. The request probe alone flags
plain prose read that way (46% of the model's own benign paragraphs on
calibration data: it was fitted on requests), so a candidate's score is the
lower of the probe's and the *gate*'s, a head at the probe layer fitted to
tell harmful requests from benign prose paragraphs and sentences
(:mod:`steerguard.calibration.passage_gate`). A candidate must also reach its
own cut, ``passage.candidate_cut``, stricter than a lone turn's: a document
offers several candidates, and a closing borderline question read at the
lone turn's cut would flag a whole document as often as the probe flags the
question alone (:meth:`~steerguard.bundle.Bundle.candidate_score`). A
passage's score is then the higher of its segment ends' and its
candidates'. Cost: a few short reads up to the probe layer per text (benign
prose rarely reaches the floor), at most one per window plus one
(docs/calibration.md). The classifier's ``--no-passage-candidates`` reads
none.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # light at import: the views and the classifier's config read this module
    import torch

    from steerguard.bundle import Bundle
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
    # Per position, the candidate it reads again: the paragraph ending there, as ``(first, last)``
    # indices in the window (``None``: nothing but line breaks); empty when candidates are off.
    paragraphs: tuple[tuple[int, int] | None, ...] = ()
    last: bool = False  # the text's final window: its last paragraph is always a candidate

    def key(self) -> str:
        """The sha256 the verdict cache keys a passage on: its tokens, the segments and candidates read.

        The hashed text starts with ``passage|``, which no conversation digest hashes.
        """
        spans = ",".join(f"{a}-{b}" for a, b in zip(self.starts, self.positions, strict=True))
        raw = "passage|" + ",".join(map(str, self.ids)) + "|" + spans
        if self.paragraphs:
            raw += "|" + ",".join("-" if c is None else f"{c[0]}-{c[1]}" for c in self.paragraphs)
            raw += "|last" if self.last else ""
        return hashlib.sha256(raw.encode()).hexdigest()

    def candidates(self, scores: Sequence[float], floor: float) -> list[tuple[int, int]]:
        """Spans read again: the top position's paragraph when it reaches ``floor``, and the last one's
        in the text's final window (each once)."""
        if not self.paragraphs:
            return []
        top = max(range(len(scores)), key=lambda i: scores[i])
        picks = [top] if scores[top] >= floor else []
        if self.last and len(self.positions) - 1 not in picks:
            picks.append(len(self.positions) - 1)
        return [span for i in picks if (span := self.paragraphs[i]) is not None]


# Per tokenizer: (enders, newlines), from one pass that decodes the whole vocabulary.
_TOKEN_SETS: weakref.WeakKeyDictionary[Any, tuple[frozenset[int], frozenset[int]]] = (
    weakref.WeakKeyDictionary()
)


def _token_sets(tokenizer: Any) -> tuple[frozenset[int], frozenset[int]]:
    """Ids of ender tokens and of line-break tokens, decoded once per tokenizer (a start-up cost:
    every token of the vocabulary is decoded)."""
    try:
        return _TOKEN_SETS[tokenizer]
    except (KeyError, TypeError):
        pass
    enders, newlines = set(), set()
    for _, i in tokenizer.get_vocab().items():
        text = tokenizer.decode([i])
        if any(e in text for e in ENDERS):
            enders.add(int(i))
        if "\n" in text:
            newlines.add(int(i))
    found = (frozenset(enders), frozenset(newlines))
    with contextlib.suppress(TypeError):  # a tokenizer that cannot be weakly referenced: each time
        _TOKEN_SETS[tokenizer] = found
    return found


def ender_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of tokens whose text ends a segment."""
    return _token_sets(tokenizer)[0]


def newline_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of tokens whose text holds a line break: a candidate paragraph never crosses one."""
    return _token_sets(tokenizer)[1]


def paragraph(ids: Sequence[int], end: int, newlines: frozenset[int], limit: int) -> tuple[int, int] | None:
    """``(first, last)``: the text up to ``end``, line breaks at its end dropped, back to the previous
    line break, at most ``limit`` tokens; None when there is only line breaks."""
    last = end
    while last > 0 and ids[last] in newlines:
        last -= 1
    if ids[last] in newlines:
        return None
    first = last
    while first > 0 and ids[first - 1] not in newlines and last - first < limit - 1:
        first -= 1
    return first, last


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
    candidates: tuple[frozenset[int], int] | None = None,
) -> list[Passage]:
    """Overlapping windows of ``ids``; every segment end read in exactly one of them.

    A segment end belongs to the last window that has at least ``overlap``
    tokens before it (the first window owns the text's start). ``candidates``
    (newline ids, tokens at most): each position's paragraph is noted for the gate.
    """
    overlap = min(overlap, window // 2)
    step = window - overlap
    owned: dict[int, list[tuple[int, int]]] = {}
    begin = 0
    for e in segment_ends(ids, enders):
        k = max(0, (e - overlap) // step)
        owned.setdefault(k, []).append((max(0, begin - k * step), e - k * step))
        begin = e + 1
    out = [
        Passage(
            tuple(ids[k * step : k * step + window]),
            tuple(e for _, e in spans),
            tuple(b for b, _ in spans),
            k * step,
        )
        for k, spans in sorted(owned.items())
    ]
    if candidates is None or not out:
        return out
    newlines, limit = candidates
    out = [
        replace(p, paragraphs=tuple(paragraph(p.ids, e, newlines, limit) for e in p.positions)) for p in out
    ]
    out[-1] = replace(out[-1], last=True)
    return out


def length_groups(lengths: Sequence[int], fill: float = 0.75) -> list[list[int]]:
    """Indices grouped for padded batches, longest first: a row joins a group only when at least
    ``fill`` of its padded width is its own tokens.

    Why: a text's windows are full but for the last, often a few dozen tokens
    (a 4,098-token text: nine 512-token windows and one of 66), and padding
    that one to 512 made it cost a full window (about a tenth of the text's
    time, bench/bench_length.py).
    """
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and lengths[i] >= fill * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


# Reads a passage's hidden states ``{layer: [1, T, H]}`` at the layers asked, from its raw tokens
# (the classifier's compiled pass, classifier_service.accelerated; by default a PyTorch pass).
HiddenOf = Callable[[Sequence[int], Sequence[int]], "dict[int, torch.Tensor]"]


def position_states(
    host: ModelHost, passages: Sequence[Passage], layers: Sequence[int], hidden_of: HiddenOf | None = None
) -> dict[int, torch.Tensor]:
    """{layer: [positions, 2H]} what the passage probe reads, in passage order.

    Per segment end: the state at the end, then the mean state over its
    segment (``starts[i]`` to ``positions[i]``, both included). Passages of
    like length share a padded batch (:func:`length_groups`); with
    ``hidden_of``, each passage is read by it alone.
    """
    import torch

    if hidden_of is not None:
        found = [_gathered(hidden_of(p.ids, layers), [p]) for p in passages]
        return {layer: torch.cat([f[layer] for f in found]) for layer in layers}
    groups = length_groups([len(p.ids) for p in passages])
    if len(groups) == 1:
        return _padded_states(host, passages, layers)
    found = [_padded_states(host, [passages[i] for i in g], layers) for g in groups]
    rows: list[int] = []  # each output row's place: passage order, then position order
    offsets = list(itertools.accumulate((len(p.positions) for p in passages), initial=0))
    for g in groups:
        rows += [r for i in g for r in range(offsets[i], offsets[i + 1])]
    order = torch.argsort(torch.tensor(rows))
    return {layer: torch.cat([f[layer] for f in found])[order] for layer in layers}


def _padded_states(
    host: ModelHost, passages: Sequence[Passage], layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """:func:`position_states` of passages in one left-padded batch."""
    from steerguard.model.activations import reduced_states

    batch = host.pad([list(p.ids) for p in passages])
    return reduced_states(
        host, batch, layers, reduce=lambda hidden: _gather(hidden, passages, batch.attention_mask)
    )


def _gathered(hidden: dict[int, torch.Tensor], passages: Sequence[Passage]) -> dict[int, torch.Tensor]:
    """:func:`_gather` of each layer's ``[B, T, H]`` states of unpadded rows."""
    import torch

    mask = torch.ones(hidden[next(iter(hidden))].shape[:2], dtype=torch.long)
    return {layer: _gather(h.float(), passages, mask) for layer, h in hidden.items()}


def _gather(hidden: torch.Tensor, passages: Sequence[Passage], mask: torch.Tensor) -> torch.Tensor:
    """``[positions, 2H]`` from a batch's ``[B, T, H]`` states, its rows ``passages`` left-padded
    to ``T`` (``mask``: 1 on real tokens): each end's state, then its segment's mean."""
    import torch

    width = hidden.shape[1]
    real = mask.to(torch.float64)[..., None]  # left padding adds nothing to a mean
    rows = [i for i, p in enumerate(passages) for _ in p.positions]
    ends = [width - len(p.ids) + q for p in passages for q in p.positions]
    begins = [width - len(p.ids) + b for p in passages for b in p.starts]
    # total[:, j] sums the states before j, in float64 so differences keep their digits
    total = torch.nn.functional.pad((hidden.double() * real.to(hidden.device)).cumsum(dim=1), (0, 0, 1, 0))
    sums = total[rows, [e + 1 for e in ends], :] - total[rows, begins, :]
    counts = torch.tensor([e + 1 - b for b, e in zip(begins, ends, strict=True)], dtype=torch.float64)
    means = (sums / counts[:, None].to(sums.device)).to(hidden.dtype)
    return torch.cat([hidden[rows, ends, :], means], dim=1)


def passage_features(
    host: ModelHost, passages: Sequence[Passage], layers: Sequence[int], hidden_of: HiddenOf | None = None
) -> torch.Tensor:
    """``[positions, 2H × len(layers)]``: :func:`position_states` of ``layers`` side by side, in order."""
    import torch

    states = position_states(host, passages, layers, hidden_of)
    return torch.cat([states[layer] for layer in layers], dim=1)


# Reads the probe layer's last-token states ``[N, H]`` of token rows (the classifier's own path,
# with its template-prefix cache; by default a plain forward pass).
StatesOf = Callable[[list[list[int]]], "torch.Tensor"]


def passage_scores(
    host: ModelHost,
    bundle: Bundle,
    passages: Sequence[Passage],
    states_of: StatesOf | None = None,
    hidden_of: HiddenOf | None = None,
) -> list[float]:
    """Each passage's score: its highest segment end under the bundle's passage head, or a candidate's
    (``states_of`` reads candidates, ``hidden_of`` the passages; by default PyTorch passes)."""
    info = bundle.passage
    if not passages or info is None:
        return []
    values = bundle.passage_score(passage_features(host, passages, info.layers, hidden_of)).tolist()
    out: list[float] = []
    picks: list[tuple[int, tuple[int, ...]]] = []
    at = 0
    for i, p in enumerate(passages):
        scores = values[at : at + len(p.positions)]
        at += len(p.positions)
        out.append(float(max(scores)))
        if info.gate_cut is not None:
            picks += [(i, p.ids[a : b + 1]) for a, b in p.candidates(scores, info.candidate_floor or 0.0)]
    found = candidate_scores(host, bundle, [ids for _, ids in picks], states_of)
    for (i, _), score in zip(picks, found, strict=True):
        out[i] = max(out[i], score)
    return out


def candidate_scores(
    host: ModelHost, bundle: Bundle, spans: Sequence[Sequence[int]], states_of: StatesOf | None = None
) -> list[float]:
    """Each span read as a lone user turn, scored by :meth:`~steerguard.bundle.Bundle.candidate_score`."""
    from steerguard.messages import Message
    from steerguard.model.activations import last_token_states
    from steerguard.model.chat import Conversation

    texts = [host.decode(list(ids)).strip() for ids in spans]
    rows = [i for i, t in enumerate(texts) if t]
    out = [0.0] * len(spans)
    if not rows:
        return out
    ids = [host.token_ids(Conversation((Message("user", texts[i]),))) for i in rows]
    layer = bundle.probe_layer
    states = states_of(ids) if states_of else last_token_states(host, host.pad(ids), [layer])[layer]
    for i, score in zip(rows, bundle.candidate_score(states).tolist(), strict=True):
        out[i] = float(score)
    return out


def text_ids(host: ModelHost, text: str) -> list[int]:
    """``text``'s raw tokens, chat-template tokens typed into it made plain (as the views read it)."""
    from steerguard.messages import Message
    from steerguard.model.chat import Conversation, neutralise

    plain = neutralise(Conversation((Message("user", text),)), host.special_tokens).messages[0].content
    return [int(i) for i in host.tokenizer(plain, add_special_tokens=False)["input_ids"]]
