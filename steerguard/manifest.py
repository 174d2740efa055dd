"""The bundle manifest as typed dataclasses: one writer (calibration), every reader through these types.

``manifest.json`` is what a bundle *is* besides its tensors: which model it
was calibrated on, where the probe reads and where it cuts, which vectors
steer at which layers and strengths, and the record of how all of it was
chosen. Serving reads the first part (:class:`ModelInfo`, :class:`ProbeInfo`,
:class:`VectorInfo`, :class:`PolicyInfo`); the record
(:class:`CalibrationRecord` and the report sections) is for people and for
``steerguard eval``, which rebuilds calibration's splits from it.

The JSON form round-trips exactly (``Manifest.from_dict(d).to_dict() == d``),
because the ``bundle_id`` hashes it: optional fields absent from a manifest
stay absent when it is written again. Report sections that only people read
(layer scores, the strength search's tries, vocabulary projections) are kept
as JSON values (:data:`Record`) inside typed containers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from steerguard.errors import BundleError

FORMAT_VERSION = 1
REFUSAL = "refusal"
# What a policy names to answer flagged prompts with the refusal head (not a vector).
REFUSAL_HEAD = "refusal-head"
CATEGORY_PREFIX = "category:"
# Bundles that record no languages were calibrated on the English data sets only.
ENGLISH_ONLY = ("en",)

Record = dict[str, Any]


def _drop_none(values: Mapping[str, Any]) -> Record:
    return {k: v for k, v in values.items() if v is not None}


def _fields_record(entry: Any) -> Record:
    """A manifest entry's fields as JSON, the unset ones left out."""
    return _drop_none({f.name: getattr(entry, f.name) for f in fields(entry)})


def _known(cls: type, data: Mapping[str, Any], where: str) -> Record:
    """``data`` restricted to ``cls``'s fields; a missing required field is a BundleError."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise BundleError(f"manifest {where}: unknown field(s) {', '.join(unknown)}")
    return dict(data)


@dataclass(frozen=True)
class ModelInfo:
    """The exact weights a bundle was calibrated on (``sha256``) and their shape."""

    name: str
    sha256: str
    hidden_size: int
    num_layers: int

    def to_dict(self) -> Record:
        return {
            "hidden_size": self.hidden_size,
            "name": self.name,
            "num_layers": self.num_layers,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class ProbeInfo:
    """Where the probe reads (``layer``), where it cuts (``threshold``) and which head it is.

    ``kind`` is ``logistic`` or ``mlp``; the MLP's hyper-parameters are
    recorded beside it. The rest is calibration's record of how the layer
    and the cut were chosen.
    """

    layer: int
    threshold: float
    kind: str = "logistic"
    hidden: int | None = None
    members: int | None = None
    weight_decay: float | None = None
    dropout: float | None = None
    epochs: int | None = None
    features: str | None = None
    c: float | None = None
    hard_negative_weight: float | None = None
    threshold_rule: str | None = None
    oof: Record | None = None
    layer_selection: list[Record] | None = None
    system_prompts: Record | None = None

    def to_dict(self) -> Record:
        return _fields_record(self)


@dataclass(frozen=True)
class PassageInfo:
    """The passage probe: how a text too long for one view is read (:mod:`steerguard.passages`).

    Windows of ``window_tokens`` raw text tokens (``overlap_tokens`` read
    again), each read up to ``layer``; a logistic head scores the state at
    every segment end. ``cut`` is the head's own cut, chosen on calibration
    data so that a benign document of ``reference_tokens`` would be flagged
    at most ``max_document_flagged`` of the time; the stored bias is shifted
    so that this cut sits at the probe's threshold, and a passage's score
    compares with any view's. The rest is calibration's record.
    """

    layer: int
    cut: float
    window_tokens: int
    overlap_tokens: int
    reference_tokens: int | None = None
    max_document_flagged: float | None = None
    recall: float | None = None
    position_flagged: float | None = None
    auroc: float | None = None
    rows: Record | None = None
    layer_selection: list[Record] | None = None
    # Layers whose segment states the head reads side by side, shallowest first, the
    # last being ``layer`` (layers below it come free with the pass); unset: ``layer`` alone.
    feature_layers: list[int] | None = None
    # The passage gate (steerguard.passages, candidates): its own cut before the bias shift (unset:
    # no candidates are read), the passage score a top segment end needs to be read again, the
    # longest candidate in tokens, and calibration's record of the gate. ``candidate_cut``: the
    # score (on the probe's scale) a candidate needs, stricter than a lone turn's threshold
    # (unset: the threshold); candidates' scores are moved so that it sits at the threshold.
    gate_cut: float | None = None
    candidate_floor: float | None = None
    candidate_tokens: int | None = None
    gate: Record | None = None
    candidate_cut: float | None = None

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers the passage head reads, in the order of its features."""
        return tuple(self.feature_layers) if self.feature_layers else (self.layer,)

    def to_dict(self) -> Record:
        return _fields_record(self)


# What the response heads read at each segment end, in column order (steerguard.responses).
FEATURES = "end+recent_mean+context_end"
FEATURES_V1 = "end+recent_mean"  # bundles before the context's state: read as the first 2H columns
# What an answer in a multi-turn chat is read after (ResponseInfo.view; steerguard.responses.answer_view).
VIEW_CHAT, VIEW_REQUEST = "chat", "request"
# ResponseInfo.short_turns: a short turn the follow-up rule does not take is read both ways.
SHORT_TURNS_BOTH = "both"


@dataclass(frozen=True)
class ResponseInfo:
    """The response probe: how an answer is judged as it is written (:mod:`steerguard.responses`).

    The answer is read in its conversation's chat framing, after the
    assistant's generation prompt, up to ``layer``; a logistic head scores
    every segment end of the answer. ``cut`` is the head's own cut, chosen
    on calibration pairs so that at most ``max_benign_flagged`` of benign
    answers would be flagged; the stored bias is shifted so that this cut
    sits at the probe's threshold (an answer is unsafe when a position
    scores at least that): an answer's score compares with a prompt's.
    ``content_cut`` is the content head's own cut (``None``: a bundle with
    the compliance head only), chosen jointly with ``cut`` so that the two
    together flag at most ``max_benign_flagged``; ``content_recall`` is the
    share of harmful answers placed after innocent requests caught there.
    ``multi_turn``: the record of the second pair of heads (``response_turns.*``,
    ``response_turns_content.*``), at the same layer, that judges answers in
    conversations with earlier turns (``None``: every answer is judged by the
    first pair). ``view``: what an answer after earlier turns is read after:
    ``chat`` (``None``: bundles before it), the conversation as sent; ``request``, the
    latest request that is not a follow-up, with what the assistant said to
    it since read first (:func:`steerguard.responses.answer_view`), judged by
    the first pair; ``follow_ups`` records what that catches and flags on
    calibration's continued answers, out of fold. ``short_turns`` (request
    view only): ``both``, where the request the follow-up rule finds is a
    short user turn after an answer (one the rule did not take), it is read
    both ways, as the request and as a follow-up, and the answer is flagged
    only where both readings flag
    (:func:`steerguard.responses.answer_readings`); ``None``, the rule alone decides.
    The rest is calibration's record.
    """

    layer: int
    cut: float
    features: str
    max_benign_flagged: float | None = None
    content_cut: float | None = None
    content_recall: float | None = None
    recall: float | None = None
    auroc: float | None = None
    c: float | None = None
    rows: Record | None = None
    layer_selection: list[Record] | None = None
    multi_turn: Record | None = None
    view: str | None = None  # None: VIEW_CHAT
    follow_ups: Record | None = None
    short_turns: str | None = None  # None: the follow-up rule alone

    def to_dict(self) -> Record:
        return _fields_record(self)


@dataclass(frozen=True)
class CascadeInfo:
    """An early exit before the probe layer: a cheap probe that clears confident prompts.

    A logistic head reads a prompt view's last-token state at ``layer``
    (shallower than the probe's); a view scoring below ``exit_cut`` is judged
    safe there, and the layers after it never run. Only safe verdicts exit:
    an unsafe one needs the probe layer's state for its category. The layer
    and cut were chosen on calibration data, out of fold, so that at most
    ``max_unsafe_exit`` of the harmful calibration rows would leave early
    (:mod:`steerguard.calibration.cascade`); ``benign_exit`` is the share of
    ordinary benign rows that did. The rest is calibration's record.
    """

    layer: int
    exit_cut: float
    max_unsafe_exit: float | None = None
    unsafe_exit: float | None = None
    benign_exit: float | None = None
    hard_exit: float | None = None
    agreement: float | None = None
    c: float | None = None
    layer_selection: list[Record] | None = None

    def to_dict(self) -> Record:
        return _fields_record(self)


@dataclass(frozen=True)
class VectorInfo:
    """One steering vector: the layers it is added at and its strength relative to the residual norm.

    ``prompt_gain`` multiplies the delta over a steered row's prompt
    positions (1 when absent).
    """

    layers: tuple[int, ...]
    strength: float
    prompt_gain: float | None = None
    method: str | None = None
    orientation: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str) -> VectorInfo:
        known = _known(cls, data, f"vectors.{name}")
        known["layers"] = tuple(int(x) for x in known.get("layers", ()))
        return cls(**known)

    def to_dict(self) -> Record:
        out = _fields_record(self)
        out["layers"] = list(self.layers)
        return out


@dataclass(frozen=True)
class PolicyInfo:
    """How ``auto`` answers an unsafe prompt: ``default``, or per category.

    Each names a vector (``refusal``, ``category``) or :data:`REFUSAL_HEAD`.
    """

    default: str = REFUSAL
    per_category: Mapping[str, str] = field(default_factory=dict)

    def names(self, choice: str) -> bool:
        return self.default == choice or choice in self.per_category.values()

    def replacing(self, choice: str, by: str) -> PolicyInfo:
        """This policy with every ``choice`` answered by ``by`` instead."""
        per = {c: by if v == choice else v for c, v in self.per_category.items()}
        return PolicyInfo(by if self.default == choice else self.default, per)

    def to_dict(self) -> Record:
        return {"default": self.default, "per_category": dict(self.per_category)}


@dataclass(frozen=True)
class DataSource:
    """One data file calibration read: its path under the data folder, hash and row counts."""

    path: str
    sha256: str
    rows: int
    used: int = 0

    def to_dict(self) -> Record:
        return {"path": self.path, "rows": self.rows, "sha256": self.sha256, "used": self.used}


@dataclass(frozen=True)
class CalibrationRecord:
    """The calibration settings (``config``, as ``asdict`` of the config) and step timings."""

    config: Record = field(default_factory=dict)
    timings_s: Record = field(default_factory=dict)

    def to_dict(self) -> Record:
        return {"config": dict(self.config), "timings_s": dict(self.timings_s)}


@dataclass(frozen=True)
class Manifest:
    """A whole manifest. ``bundle_id`` is empty until :meth:`steerguard.bundle.Bundle.save` sets it."""

    model: ModelInfo
    probe: ProbeInfo
    created_at: str
    categories: tuple[str, ...] = ()
    vectors: Mapping[str, VectorInfo] = field(default_factory=dict)
    policy: PolicyInfo = field(default_factory=PolicyInfo)
    data_sources: tuple[DataSource, ...] = ()
    metrics: Record = field(default_factory=dict)
    note: str = ""
    format_version: int = FORMAT_VERSION
    bundle_id: str = ""
    calibration: CalibrationRecord | None = None
    splits: Record | None = None
    steering_search: Record | None = None
    vocab_projection: Record | None = None
    alternatives: Record | None = None
    languages: tuple[str, ...] | None = None  # ISO 639-1 codes calibration covered; None: ENGLISH_ONLY
    passage: PassageInfo | None = None  # None: long texts are read in chat-framed windows only
    response: ResponseInfo | None = None  # None: answers are judged by the prompt probe
    cascade: CascadeInfo | None = None  # None: every prompt view runs to the probe layer
    # The classifier's content category head (tensors category_content.*), calibration's record
    # of it; None: the classifier's categories come from the last-token head (category.*).
    category_content: Record | None = None
    # The refusal head (tensors refusal_head.a/.b; steerguard.refusal_head), calibration's record
    # of it; None: flagged rows can only be steered with vectors.
    refusal_head: Record | None = None
    # The category vectors' strength search (steerguard.calibration.category_tune); None: the
    # strength is calibration's fixed ``category_strength``.
    category_search: Record | None = None

    # -- JSON -------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Parse a manifest's JSON; a malformed one is a :class:`BundleError` naming the field."""
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"unsupported bundle format {data.get('format_version')!r}")
        d = _known(cls, data, "top level")
        try:
            d["model"] = ModelInfo(**_known(ModelInfo, d["model"], "model"))
            d["probe"] = ProbeInfo(**_known(ProbeInfo, d["probe"], "probe"))
            d["categories"] = tuple(str(c) for c in d.get("categories", ()))
            d["vectors"] = {n: VectorInfo.from_dict(v, n) for n, v in d.get("vectors", {}).items()}
            d["policy"] = PolicyInfo(**_known(PolicyInfo, d.get("policy", {}), "policy"))
            d["data_sources"] = tuple(DataSource(**s) for s in d.get("data_sources", ()))
            if "languages" in d:
                d["languages"] = tuple(str(x) for x in d["languages"])
            if "passage" in d:
                d["passage"] = PassageInfo(**_known(PassageInfo, d["passage"], "passage"))
            if "response" in d:
                d["response"] = ResponseInfo(**_known(ResponseInfo, d["response"], "response"))
            if "category_content" in d:
                d["category_content"] = dict(d["category_content"])
            if "refusal_head" in d:
                d["refusal_head"] = dict(d["refusal_head"])
            if "category_search" in d:
                d["category_search"] = dict(d["category_search"])
            if "cascade" in d:
                d["cascade"] = CascadeInfo(**_known(CascadeInfo, d["cascade"], "cascade"))
            if "calibration" in d:
                d["calibration"] = CalibrationRecord(
                    **_known(CalibrationRecord, d["calibration"], "calibration")
                )
            return cls(**d)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"malformed bundle manifest: {exc}") from exc

    def to_dict(self) -> Record:
        """The JSON form (what ``bundle_id`` hashes); ``bundle_id`` is left out while empty."""
        out: Record = {
            "format_version": self.format_version,
            "created_at": self.created_at,
            "model": self.model.to_dict(),
            "probe": self.probe.to_dict(),
            "categories": list(self.categories),
            "vectors": {n: v.to_dict() for n, v in self.vectors.items()},
            "policy": self.policy.to_dict(),
            "data_sources": [s.to_dict() for s in self.data_sources],
            "metrics": self.metrics,
            "note": self.note,
            "bundle_id": self.bundle_id or None,
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
            "splits": self.splits,
            "steering_search": self.steering_search,
            "vocab_projection": self.vocab_projection,
            "alternatives": self.alternatives,
            "languages": list(self.languages) if self.languages is not None else None,
            "passage": self.passage.to_dict() if self.passage is not None else None,
            "response": self.response.to_dict() if self.response is not None else None,
            "cascade": self.cascade.to_dict() if self.cascade is not None else None,
            "category_content": self.category_content,
            "refusal_head": self.refusal_head,
            "category_search": self.category_search,
        }
        return _drop_none(out)

    # -- edits (a manifest is frozen; these return a changed copy) -------------------

    @property
    def calibrated_languages(self) -> tuple[str, ...]:
        return self.languages if self.languages is not None else ENGLISH_ONLY

    def with_threshold(self, threshold: float) -> Manifest:
        return replace(self, probe=replace(self.probe, threshold=float(threshold)))

    def with_vector(self, name: str, info: VectorInfo) -> Manifest:
        return replace(self, vectors={**self.vectors, name: info})

    # -- readers ------------------------------------------------------------------------

    def vector(self, name: str) -> VectorInfo:
        try:
            return self.vectors[name]
        except KeyError:
            raise BundleError(f"unknown steering vector {name!r}") from None
