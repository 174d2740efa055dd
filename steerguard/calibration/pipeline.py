"""Calibration pipeline: labelled prompts → a :class:`~steerguard.bundle.Bundle`.

Steps (each one's *why* lives in its module):

1. :mod:`steerguard.data.loaders` loads and splits the prompts (calibration split only
   is used here; the held-out split is the evaluation's).
2. One forward pass per prompt reads the last-token state at every layer.
3. :mod:`steerguard.calibration.probe` picks the probe layer on validation data, fits the
   probe and calibrates its threshold on out-of-fold predictions;
   :mod:`steerguard.calibration.mining` then adds the benign pool prompts that this
   first probe scores highest as hard negatives, and the probe is fitted
   again at the same layer (threshold included). Follow-up turns
   (:mod:`steerguard.data.follow_ups`) are benign rows of both fits. A
   softmax category head is fitted on the same standardised state.
   :mod:`steerguard.calibration.passages` then fits the passage probe that
   reads long texts at their segment ends, on documents built from
   calibration prompts.
4. :mod:`steerguard.calibration.vectors` computes the residual norms, the difference-of-
   means and contrastive refusal directions, scores layers by vocabulary
   projection (candidates from the probe layer up, which ``auto`` needs to
   steer a flagged prompt's own positions) and builds the category vectors.
5. A small generation search (AUTO mode, the real serving path) on a few
   calibration prompts picks the refusal variant, its layers and strength:
   the weakest steering that makes the strict judge see a refusal on at least
   ``target_refusal`` of harmful prompts while keeping the steered outputs'
   perplexity under the unsteered model within ``max_ppl_ratio`` of the
   unsteered outputs'.
6. The bundle is assembled; then :mod:`steerguard.calibration.responses` fits the
   response probe on answers the model writes to calibration prompts (its
   refusals steered by that bundle's refusal vector), which judges what a
   chatbot says back.
7. :mod:`steerguard.calibration.category_tune` sets the category vectors'
   strength: the one whose AUTO answers :mod:`steerguard.answer_judge` (which
   reads the response probe) most often finds safe, on-topic and not refusals.

Deterministic: seeded sampling, deterministic fits, greedy decoding;
``created_at`` honours ``SOURCE_DATE_EPOCH`` so a rebuild can be byte-identical.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerguard import language
from steerguard.bundle import Bundle
from steerguard.calibration import passages
from steerguard.calibration.cascade import CascadeRows, CascadeSettings, fit_cascade
from steerguard.calibration.categories import UnsureRule, content_category_head, extra_rows
from steerguard.calibration.category_tune import tune_category_strength
from steerguard.calibration.config import CalibrationConfig
from steerguard.calibration.mining import MINED, MiningResult, mine_negatives
from steerguard.calibration.passage_gate import ProbeOOF, fit_passage_gate
from steerguard.calibration.probe import fit_categories
from steerguard.calibration.refusal_head import HeadSettings
from steerguard.calibration.refusal_head import refusal_head as fit_refusal_head
from steerguard.calibration.responses import response_probe
from steerguard.calibration.selection import ProbeFit, fit_probe
from steerguard.calibration.threshold import HARD_NEGATIVE_KINDS
from steerguard.calibration.tune import TuneResult, tune_refusal
from steerguard.calibration.vectors import (
    LayerProjection,
    candidate_layers,
    category_directions,
    contrastive_direction,
    mean_difference,
    residual_norms,
    vocab_projection,
)
from steerguard.data import follow_ups, prose, refusals, system_prompts
from steerguard.data.loaders import CALIBRATION, HARMFUL, XSTEST_TRAIN_TYPES, Dataset, Example
from steerguard.errors import DataError
from steerguard.logs import get_logger
from steerguard.manifest import (
    CATEGORY_PREFIX,
    ENGLISH_ONLY,
    REFUSAL,
    REFUSAL_HEAD,
    CalibrationRecord,
    CascadeInfo,
    DataSource,
    Manifest,
    ModelInfo,
    PassageInfo,
    PolicyInfo,
    ProbeInfo,
    VectorInfo,
)
from steerguard.model.chat import Conversation, normalise_request
from steerguard.model.host import ModelHost
from steerguard.model.states import cached_states

__all__ = ["CalibrationConfig", "calibrate", "xstest_family"]

log = get_logger(__name__)

ALT_MEAN = "alt.refusal_mean"
ALT_CONTRASTIVE = "alt.refusal_contrastive"
SYSTEM_COPIES = "every probe row once more, under the system prompt its text hash picks"
FOLLOW_UP_SOURCE = "builtin:steerguard/data/follow_ups.py"


def xstest_family(group: str | None) -> str | None:
    """``contrast_homonyms`` and ``homonyms`` are one family; privacy_* and discr types likewise."""
    if not group:
        return None
    g = group.removeprefix("contrast_")
    if g.startswith("privacy"):
        return "privacy"
    if "discr" in g:
        return "discrimination"
    return g


def _convs(examples: Sequence[Example]) -> list[Conversation]:
    return [normalise_request(e.prompt) for e in examples]


def _system_convs(examples: Sequence[Example], prompts: Sequence[str]) -> list[Conversation]:
    """Each example under the system prompt :func:`steerguard.data.system_prompts.pick` gives it."""
    return [system_prompts.with_system(e.prompt, system_prompts.pick(e.key, prompts)) for e in examples]


def _created_at() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        dt.datetime.fromtimestamp(int(epoch), tz=dt.timezone.utc)
        if epoch
        else dt.datetime.now(tz=dt.timezone.utc).replace(microsecond=0)
    )
    return when.isoformat()


def _sample(items: Sequence[Example], n: int, seed: int) -> list[Example]:
    items = list(items)
    if len(items) <= n:
        return items
    return random.Random(seed).sample(items, n)


@dataclass
class Run:
    """One calibration run's state, passed from step to step."""

    cfg: CalibrationConfig
    host: ModelHost
    data: Dataset
    calib: list[Example]
    # Probe rows beyond the calibration split's prompts (follow-up turns), fitted as benign.
    extra: list[Example] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    states: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [N, H], template rows
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    # What the steps found, in order: the probe, its mining, the category head, the vectors,
    # the steering search.
    fitted: ProbeFit | None = None
    mining: MiningResult | None = None
    passage: PassageInfo | None = None
    prose: list[str] | None = None  # the model's answers to pool prompts (prose_answers)
    cascade: CascadeInfo | None = None
    category_content: dict[str, Any] | None = None
    categories: list[str] = field(default_factory=list)
    category_train_accuracy: float = float("nan")
    found: Vectors | None = None
    search: SearchOutcome | None = None

    @property
    def fit(self) -> ProbeFit:
        assert self.fitted is not None, "the probe is fitted in step 3"
        return self.fitted

    @property
    def vectors(self) -> Vectors:
        assert self.found is not None, "the vectors are found in step 4"
        return self.found

    @property
    def n_layers(self) -> int:
        return self.host.loaded_layers

    @property
    def copies(self) -> bool:
        return bool(self.cfg.system_prompts)

    def doubled(self, values: list[Any]) -> list[Any]:
        """Per-row values for the probe's rows: the template rows, then (with copies) the copies."""
        return values + values if self.copies else values

    def cached(self, convs: Sequence[Conversation], **kw: Any) -> torch.Tensor:
        return cached_states(
            self.host, convs, batch_size=self.cfg.batch_size, use_cache=self.cfg.use_cache, **kw
        )

    @property
    def harmful_idx(self) -> list[int]:
        return [i for i, e in enumerate(self.calib) if e.label == HARMFUL]

    @property
    def benign_idx(self) -> list[int]:
        return [i for i, e in enumerate(self.calib) if e.label != HARMFUL and e.kind == "benign"]


@dataclass
class SearchOutcome:
    """Step 5's output: the chosen steering, every setting tried, and what they were judged on."""

    best: TuneResult
    tried: list[TuneResult]
    base_ppl: float
    prompts: int


@dataclass
class Vectors:
    """Step 4's output: candidate refusal directions, their ranked layers, the category vectors."""

    contrastive: torch.Tensor
    mean: torch.Tensor
    projections: dict[str, list[LayerProjection]]
    ranked: dict[str, list[int]]
    categories: dict[str, torch.Tensor]


def calibrate(
    data_dir: str | Path,
    *,
    model_path: str | None = None,
    host: ModelHost | None = None,
    config: CalibrationConfig | None = None,
    dataset: Dataset | None = None,
) -> Bundle:
    """Run the whole pipeline and return an (unsaved) bundle."""
    t0 = time.time()
    run = _load(data_dir, model_path, host, config or CalibrationConfig(), dataset)
    probe_rows = _timed(run, "states_s", _read_states, run, since=t0)
    _timed(run, "probe_s", _probe_step, run, probe_rows)
    _timed(run, "cascade_s", _cascade_step, run, probe_rows)
    _timed(run, "passage_s", _passage_step, run)
    _timed(run, "vectors_s", _vectors, run)
    manifest = _provisional_manifest(run)
    _timed(run, "tune_s", _search, run, manifest)
    bundle = _timed(run, "refusal_head_s", _refusal_head_step, run, _final_bundle(run, manifest))
    if run.cfg.response_harmful > 0:
        bundle = _timed(run, "response_s", _response_step, run, bundle)
        if run.cfg.category_tune_per_category > 0 and bundle.categories:
            bundle = _timed(run, "category_tune_s", category_strength, run, bundle)
        bundle = bundle.with_manifest(replace(bundle.manifest, calibration=_record(run)))
    log.info("calibrated", seconds=round(time.time() - t0))
    return bundle


def _refusal_head_step(run: Run, bundle: Bundle) -> Bundle:
    """Step 6b: SafeSwitch's refusal head (a low-rank delta on the LM head), when its rank is set.

    After the search: the steered training text uses the calibrated refusal vector.
    """
    harmful = [run.calib[i] for i in run.harmful_idx if run.calib[i].category in refusals.CONCERNS]
    if run.cfg.refusal_head_rank <= 0 or not harmful:
        return bundle
    record, tensors = refusal_head(run, harmful, bundle)
    manifest = replace(bundle.manifest, refusal_head=record, policy=head_policy(run.cfg))
    return Bundle(manifest, {**bundle.tensors, **tensors})


def head_policy(cfg: CalibrationConfig) -> PolicyInfo:
    """The policy of a bundle with a refusal head: the head answers flagged prompts, unless turned off."""
    return PolicyInfo(default=REFUSAL_HEAD if cfg.refusal_head_policy else REFUSAL, per_category={})


def refusal_head(
    run: Run, harmful: Sequence[Example], bundle: Bundle
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The refusal head under ``run``'s settings (also run alone: ``scripts/fit_refusal_head.py``)."""
    cfg = run.cfg
    settings = HeadSettings(
        rank=cfg.refusal_head_rank,
        copies=cfg.refusal_head_copies,
        epochs=cfg.refusal_head_epochs,
        lr=cfg.refusal_head_lr,
        text=cfg.refusal_head_text,
        schedules=cfg.refusal_head_schedules,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    return fit_refusal_head(run.host, harmful, settings, bundle)


def _timed(run: Run, name: str, step: Any, *args: Any, since: float | None = None) -> Any:
    """Run one step, recording its wall time under ``name`` (from ``since`` when given)."""
    start = time.time() if since is None else since
    out = step(*args)
    run.timings[name] = time.time() - start
    return out


def _load(
    data_dir: str | Path,
    model_path: str | None,
    host: ModelHost | None,
    cfg: CalibrationConfig,
    dataset: Dataset | None,
) -> Run:
    """Step 1: the data's calibration split and the model."""
    torch.manual_seed(cfg.seed)
    data = dataset or cfg.load_data(data_dir)
    host = host or ModelHost.load(model_path)
    calib = data.select(CALIBRATION)
    if not any(e.label == HARMFUL for e in calib) or all(e.label == HARMFUL for e in calib):
        raise DataError("calibration needs both harmful and benign prompts")
    extra = (
        [Example(text, 0, FOLLOW_UP_SOURCE, CALIBRATION, "benign") for text in follow_ups.CALIBRATION]
        if cfg.follow_ups
        else []
    )
    return Run(cfg, host, data, calib, extra)


def _read_states(run: Run, layers: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Step 2: last-token states at every layer (or at ``layers``); returns the probe's rows.

    In row order: the calibration prompts, their system-prompt copies, then the
    extra rows and their copies (the order of :func:`_probe_rows`).
    """
    names = list(layers) if layers is not None else list(range(run.n_layers))
    at = {"layers": list(layers)} if layers is not None else {}
    stacked = run.cached(_convs(run.calib), progress=run.cfg.progress, **at)
    run.states = {layer: stacked[:, i] for i, layer in enumerate(names)}
    parts = [stacked.numpy()]
    if run.copies:
        parts.append(_copies(run, run.calib, "system-prompt copies", at))
    if run.extra:
        parts.append(run.cached(_convs(run.extra), progress=False, **at).numpy())
        if run.copies:
            parts.append(_copies(run, run.extra, "extra rows' copies", at))
    joined = np.concatenate(parts)
    return {layer: joined[:, i] for i, layer in enumerate(names)}


def _copies(run: Run, examples: Sequence[Example], desc: str, at: dict[str, Any]) -> np.ndarray:
    convs = _system_convs(examples, run.cfg.system_prompts)
    return run.cached(convs, progress=run.cfg.progress, desc=desc, **at).numpy()


def probe_at(run: Run, layer: int) -> ProbeFit:
    """Steps 2 and 3 again at a bundle's known probe layer: the probe's rows read at that layer
    only, mining included. The same fit and out-of-fold scores as calibration's, for a step
    re-run on a bundle that needs them (``scripts/fit_passage_gate.py``)."""
    run.fitted, run.mining = _fit_probe(run, _read_states(run, [layer]))
    return run.fitted


def _probe_rows(run: Run, groups: list[str | None] | None) -> ProbeRows:
    """The rows of step 2's states: the calibration prompts', then the extra rows'."""
    extra_groups: list[str | None] | None = None if groups is None else [None] * len(run.extra)
    rows = _rows_of(run, run.calib, groups)
    return rows + _rows_of(run, run.extra, extra_groups) if run.extra else rows


@dataclass
class ProbeRows:
    """Per-row labels, kinds, XSTest families and copy clusters of the probe's rows, in row order."""

    labels: list[int]
    kinds: list[str]
    groups: list[str | None] | None
    clusters: list[str] | None

    def __add__(self, other: ProbeRows) -> ProbeRows:
        def join(a: list[Any] | None, b: list[Any] | None) -> list[Any] | None:
            return None if a is None or b is None else a + b

        return ProbeRows(
            self.labels + other.labels,
            self.kinds + other.kinds,
            join(self.groups, other.groups),
            join(self.clusters, other.clusters),
        )


def _rows_of(run: Run, examples: Sequence[Example], groups: list[str | None] | None) -> ProbeRows:
    """Rows of ``examples``: their template rows, then (with copies) their copies' rows."""
    return ProbeRows(
        run.doubled([e.label for e in examples]),
        run.doubled([e.kind for e in examples]),
        None if groups is None else run.doubled(groups),
        run.doubled([e.key for e in examples]) if run.copies else None,
    )


def _fit_on(run: Run, states: dict[int, np.ndarray], rows: ProbeRows, layer: int | None = None) -> ProbeFit:
    cfg = run.cfg
    return fit_probe(
        states,
        np.array(rows.labels),
        rows.kinds,
        seed=cfg.seed,
        c=cfg.probe_c,
        hard_weight=cfg.hard_weight,
        min_recall=cfg.min_recall,
        min_hard_recall=cfg.min_hard_recall,
        max_benign_fpr=cfg.max_benign_fpr,
        groups=rows.groups,
        kind=cfg.probe_kind,
        layer=layer,
        clusters=rows.clusters,
    )


def _fit_probe(run: Run, states: dict[int, np.ndarray]) -> tuple[ProbeFit, MiningResult | None]:
    """Step 3: the probe (layer, head, cut), refitted with hard negatives mined from the benign pool."""
    cfg = run.cfg
    groups = [xstest_family(e.group) for e in run.calib]
    mine = cfg.mine_negatives > 0 and bool(run.data.pool)
    # With mining the first fit is replaced, so its family-holdout estimate would be thrown away.
    first_rows = _probe_rows(run, None if mine else groups)
    first = _fit_on(run, {layer: x for layer, x in states.items() if layer >= 1}, first_rows)
    if not mine:
        return first, None
    t = time.time()
    mining = mine_negatives(
        run.host,
        first.probe,
        first.layer,
        first.threshold.threshold,
        run.data.pool,
        count=cfg.mine_negatives,
        sample=cfg.mine_pool,
        seed=cfg.seed + 31,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        use_cache=cfg.use_cache,
    )
    mined = mining.examples
    # The refit keeps the layer: the mined rows were picked for being hard *at this
    # layer*, so choosing the layer again with them would be biased against it.
    mined_convs = _convs(mined) + (_system_convs(mined, cfg.system_prompts) if run.copies else [])
    mined_states = run.cached(mined_convs, progress=False, layers=[first.layer])[:, 0].numpy()
    rows = _probe_rows(run, groups) + _rows_of(run, mined, [None] * len(mined))
    refit_states = {first.layer: np.concatenate([states[first.layer], mined_states])}
    fit = _fit_on(run, refit_states, rows, first.layer)
    fit.layer_scores = first.layer_scores
    run.timings["mining_s"] = time.time() - t
    return fit, mining


def _probe_step(run: Run, states: dict[int, np.ndarray]) -> None:
    """Step 3 whole: the probe, then the category head on the same standardised state."""
    run.fitted, run.mining = _fit_probe(run, states)
    fit = run.fit
    run.tensors.update(
        {"probe.mean": torch.from_numpy(fit.probe.mean), "probe.std": torch.from_numpy(fit.probe.std)}
    )
    run.tensors.update(fit.probe.tensors("probe"))
    run.categories, run.category_train_accuracy = _category_head(run, fit)


def _cascade_step(run: Run, states: dict[int, np.ndarray]) -> None:
    """Step 3a: the early exit, on the probe's own rows, before its layer and under its cut."""
    if not run.cfg.cascade or not cascade_layers(run.cfg, run.fit.layer):
        return  # off, or no layer before the probe's to exit at
    run.cascade, tensors = cascade_of(run, states, run.fit.layer, run.fit.threshold.threshold)
    run.tensors.update(tensors)


def cascade_layers(cfg: CalibrationConfig, probe_layer: int) -> list[int]:
    """The early exit's candidate layers: ``cascade_depths`` of the probe's depth, before it."""
    found = {max(1, int(d * probe_layer)) for d in cfg.cascade_depths}
    return sorted(layer for layer in found if layer < probe_layer)


def cascade_of(
    run: Run, states: dict[int, np.ndarray], probe_layer: int, threshold: float
) -> tuple[CascadeInfo, dict[str, torch.Tensor]]:
    """The early exit before a probe at ``probe_layer`` cutting at ``threshold``.

    Also run alone on a calibrated bundle (``scripts/fit_cascade.py``).
    """
    cfg = run.cfg
    rows = _probe_rows(run, None)
    layers = cascade_layers(cfg, probe_layer)
    settings = CascadeSettings(
        layers=tuple(layers),
        probe_layer=probe_layer,
        threshold=threshold,
        max_unsafe_exit=cfg.cascade_max_unsafe_exit,
        c=cfg.probe_c,
        hard_weight=cfg.hard_weight,
        seed=cfg.seed,
    )
    wanted = {layer: states[layer] for layer in [*layers, probe_layer]}
    return fit_cascade(CascadeRows(wanted, np.array(rows.labels), rows.kinds, rows.clusters), settings)


def _passage_step(run: Run) -> None:
    """Step 3b: the passage probe, on documents built from calibration prompts and the pool."""
    if run.cfg.passage_benign_docs <= 0:
        return
    run.passage, tensors = passage_probe(run, run.fit.layer, run.fit.threshold.threshold)
    run.tensors.update(tensors)
    if run.cfg.passage_gate:
        fields, gate = passage_gate(run, run.fit.layer, run.fit.threshold.threshold)
        run.passage = replace(run.passage, **fields)
        run.tensors.update(gate)


def passage_gate(
    run: Run, probe_layer: int, threshold: float
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The passage gate's fields and tensors, on harmful calibration prompts and the passage step's
    prose (also run alone on a calibrated bundle: ``scripts/fit_passage_gate.py``)."""
    harmful = [e.prompt for e in run.calib if e.label == HARMFUL]
    probe = (probe_layer, threshold)
    texts = _prose(run)
    return fit_passage_gate(run.host, harmful, texts, probe, run.cfg, _probe_oof(run))


def _probe_oof(run: Run) -> ProbeOOF | None:
    """The probe's out-of-fold scores of the calibration prompts (its template rows come first)."""
    scores = None if run.fitted is None else run.fitted.oof_scores
    if scores is None:
        return None
    calib = run.calib
    harmful = np.array([scores[i] for i, e in enumerate(calib) if e.label == HARMFUL])
    hard = [i for i, e in enumerate(calib) if e.label != HARMFUL and e.kind in HARD_NEGATIVE_KINDS]
    return ProbeOOF(harmful, [calib[i].prompt for i in hard], np.array([scores[i] for i in hard]))


def passage_probe(
    run: Run, probe_layer: int, threshold: float
) -> tuple[PassageInfo, dict[str, torch.Tensor]]:
    """The passage probe beside a request probe at ``probe_layer`` and ``threshold``.

    Also run alone on a calibrated bundle (``scripts/refit_passage.py``).
    """
    host, cfg = run.host, run.cfg
    layers = passages.candidate_layers(cfg.passage_depths, host.identity.num_layers, probe_layer)
    extra = passages.candidate_layers(cfg.passage_feature_depths, host.identity.num_layers, probe_layer)
    extra = [k for k in extra if k not in layers]
    rows = passages.read_rows(host, passage_documents(run), sorted(layers + extra), cfg)
    return passages.fit_passage_probe(rows, cfg, threshold, extra)


def passage_documents(run: Run) -> list[passages.Document]:
    """The passage probe's documents: request lists, then the model's prose (also read by
    ``scripts/passage_study.py``)."""
    calib, cfg = run.calib, run.cfg
    harmful = [e for e in calib if e.label == HARMFUL]
    ordinary = _ordinary(run)
    hard = [e.prompt for e in calib if e.label != HARMFUL and e.kind != "benign"]
    docs = passages.documents(harmful, ordinary, hard, cfg)
    if cfg.passage_prose_answers > 0:
        docs += passages.prose_documents(harmful, ordinary, hard, _prose(run), cfg)
    return docs


def _ordinary(run: Run) -> list[str]:
    return [e.prompt for e in run.data.pool] or [e.prompt for e in run.calib if e.kind == "benign"]


def _prose(run: Run) -> list[str]:
    """The model's prose for passage documents and the gate: written answers, else the prompts
    they would answer."""
    return prose_answers(run) or _prose_prompts(run)


def _prose_prompts(run: Run) -> list[str]:
    ordinary, n = _ordinary(run), run.cfg.passage_prose_answers
    return random.Random(run.cfg.seed + 47).sample(ordinary, min(n, len(ordinary)))


def prose_answers(run: Run) -> list[str]:
    """The model's answers to pool prompts that prose documents and the passage gate read (written
    once per run; 8 minutes for 240 on 2 cores)."""
    if run.prose is None:
        cfg = run.cfg
        asked = _prose_prompts(run) if cfg.passage_prose_answers > 0 else []
        run.prose = prose.write(
            run.host, asked, seed=cfg.seed, batch_size=cfg.batch_size, progress=cfg.progress
        )
    return run.prose


def _category_head(run: Run, fit: ProbeFit) -> tuple[list[str], float]:
    """A softmax category head on harmful rows with a category (template rows only)."""
    calib = run.calib
    cat_idx = [i for i in run.harmful_idx if calib[i].category]
    categories = sorted({str(calib[i].category) for i in cat_idx})
    if len(categories) < 2:
        return [], float("nan")
    x = run.states[fit.layer].numpy()[cat_idx]
    cls = np.array([categories.index(str(calib[i].category)) for i in cat_idx])
    head = fit_categories(x, cls, len(categories), (fit.probe.mean, fit.probe.std))
    run.tensors.update(head.tensors("category"))
    if run.cfg.category_content:
        run.category_content, tensors = content_category_head(
            run.host,
            _convs([calib[i] for i in cat_idx]),
            cls,
            len(categories),
            fit.layer,
            seed=run.cfg.seed,
            unsure=UnsureRule.of(run.cfg),
            batch_size=run.cfg.batch_size,
            extra=extra_rows(categories, calib) if run.cfg.category_content_extra else None,
        )
        run.tensors.update(tensors)
    return categories, float((head.predict_classes(x).argmax(1) == cls).mean())


def _vectors(run: Run) -> None:
    """Step 4: residual norms, the two refusal directions, their layers, the category vectors."""
    cfg, calib, host = run.cfg, run.calib, run.host
    probe_layer, categories = run.fit.layer, run.categories
    norm_set = _sample(list(calib), cfg.norm_prompts, cfg.seed + 11)
    norms = residual_norms(host, _convs(norm_set), batch_size=cfg.batch_size)
    run.tensors["norms"] = norms
    all_states = torch.stack([run.states[layer] for layer in range(run.n_layers)], dim=1)  # [N, L, H]
    harmful, benign = run.harmful_idx, run.benign_idx
    mean_dir = mean_difference(all_states[harmful], all_states[benign])
    contrast_set = _sample([calib[i] for i in harmful], cfg.contrastive_prompts, cfg.seed + 12) + _sample(
        [calib[i] for i in benign], cfg.contrastive_prompts, cfg.seed + 13
    )
    contrast_dir = contrastive_direction(
        host, _convs(contrast_set), batch_size=cfg.batch_size, progress=cfg.progress
    )
    projections = {
        "contrastive": vocab_projection(host, contrast_dir, norms),
        "mean_difference": vocab_projection(host, mean_dir, norms),
    }
    lo, hi = cfg.layer_band
    floor = probe_layer if cfg.steer_from_probe else 0
    ranked = {
        name: candidate_layers(proj, run.n_layers, count=max(cfg.layer_counts), lo=lo, hi=hi, floor=floor)
        for name, proj in projections.items()
    }
    cat_vectors = category_directions(
        all_states[harmful], [calib[i].category for i in harmful], all_states[benign], categories
    )
    run.found = Vectors(contrast_dir, mean_dir, projections, ranked, cat_vectors)


def _probe_info(run: Run, fit: ProbeFit) -> ProbeInfo:
    cfg = run.cfg
    copies = None
    if run.copies:
        rows = 0 if fit.oof_scores is None else len(fit.oof_scores)
        copies = {"count": len(cfg.system_prompts), "probe_rows": rows, "copies": SYSTEM_COPIES}
    return ProbeInfo(
        layer=fit.layer,
        threshold=float(fit.threshold.threshold),
        **fit.spec.describe(),
        features="last prompt token, standardised (probe.mean/probe.std)",
        c=cfg.probe_c,  # the logistic C (layer selection always fits logistic probes)
        hard_negative_weight=cfg.hard_weight,
        threshold_rule=fit.threshold.rule,
        oof={**fit.threshold.as_dict(), "auroc": round(fit.oof_auroc, 6)},
        layer_selection=[s.as_dict() for s in fit.layer_scores],
        system_prompts=copies,
    )


def _provisional_manifest(run: Run) -> Manifest:
    """The manifest the strength search generates with (through the real serving path)."""
    return Manifest(
        model=ModelInfo(**run.host.identity.as_dict()),
        probe=_probe_info(run, run.fit),
        created_at=_created_at(),
        categories=tuple(run.categories),
        vectors={REFUSAL: VectorInfo(layers=tuple(run.vectors.ranked["contrastive"][:3]), strength=1.0)},
        policy=PolicyInfo(default=REFUSAL, per_category={}),
    )


def _search(run: Run, manifest: Manifest) -> None:
    """Step 5: the steering search, with AUTO generation on a sample of calibration's harmful prompts."""
    vectors = run.vectors
    tune_h = _sample(
        [run.calib[i] for i in run.harmful_idx if run.calib[i].kind == "harmful"],
        run.cfg.tune_harmful,
        run.cfg.seed + 21,
    )
    variants = {
        "contrastive": (vectors.contrastive, vectors.ranked["contrastive"]),
        "mean_difference": (vectors.mean, vectors.ranked["mean_difference"]),
    }
    run.tensors[f"vector.{REFUSAL}"] = vectors.contrastive
    base = Bundle(manifest, run.tensors)
    best, tried, base_ppl = tune_refusal(run.host, base, variants, _convs(tune_h), run.cfg)
    run.search = SearchOutcome(best, tried, base_ppl, len(tune_h))


def _search_record(cfg: CalibrationConfig, search: SearchOutcome) -> dict[str, Any]:
    return {
        "harmful_prompts": search.prompts,
        "max_new_tokens": cfg.tune_tokens,
        "unsteered_ppl": round(search.base_ppl, 4),
        "chosen": search.best.as_dict(),
        "tried": [r.as_dict() for r in search.tried],
        "judge": "steerguard.judge (strict: explicit refusal in the opening, no pivot to compliance)",
        "rule": (
            f"most fluent steering with refusal >= {cfg.target_refusal} and ppl ratio <= {cfg.max_ppl_ratio}"
        ),
    }


def _final_vectors(run: Run, vectors: Vectors, best: TuneResult) -> dict[str, VectorInfo]:
    """The chosen refusal vector and the category vectors, into ``run.tensors`` and the manifest."""
    chosen = vectors.mean if best.variant == "mean_difference" else vectors.contrastive
    run.tensors[f"vector.{REFUSAL}"] = chosen.clone()
    run.tensors[ALT_CONTRASTIVE] = vectors.contrastive.clone()
    run.tensors[ALT_MEAN] = vectors.mean.clone()
    layers = tuple(best.layers)
    out = {
        REFUSAL: VectorInfo(
            layers=layers,
            strength=best.strength,
            prompt_gain=best.prompt_gain,
            method=best.variant,
            orientation="adding (sign +1) steers toward refusal",
        )
    }
    for cat, vec in vectors.categories.items():
        run.tensors[f"vector.{CATEGORY_PREFIX}{cat}"] = vec.contiguous().clone()
        out[f"{CATEGORY_PREFIX}{cat}"] = VectorInfo(
            layers=layers,
            strength=run.cfg.category_strength,
            method="category mean - benign mean, shared harmful direction removed, negated (SafeSteer)",
            orientation="adding (sign +1) steers away from the category's features",
        )
    return out


def _languages(examples: Sequence[Example], share: float = 0.05) -> tuple[str, ...]:
    """The languages of at least ``share`` of the calibration prompts: what the bundle is calibrated for."""
    counts: dict[str, int] = {}
    for e in examples:
        code = language.detect(e.prompt)
        if code != language.UNDETERMINED:
            counts[code] = counts.get(code, 0) + 1
    total = sum(counts.values())
    found = tuple(sorted(c for c, n in counts.items() if total and n / total >= share))
    return found or ENGLISH_ONLY


def _metrics(run: Run, best: TuneResult) -> dict[str, Any]:
    fit, train_acc = run.fit, run.category_train_accuracy
    return {
        "calibration": {
            "probe_oof_auroc": round(fit.oof_auroc, 6),
            "probe_oof_recall": round(fit.threshold.recall, 6),
            "probe_oof_recall_hard": round(fit.threshold.recall_hard, 6),
            "probe_oof_fpr_benign": round(fit.threshold.fpr_benign, 6),
            "probe_oof_fpr_borderline": round(fit.threshold.fpr_hard, 6),
            "probe_xstest_family_holdout": fit.family_holdout,
            "category_train_accuracy": round(train_acc, 6),
            "refusal_rate_search": round(best.refusal, 4),
            "ppl_ratio_search": round(best.ppl_ratio, 4),
        }
    }


def _record(run: Run) -> CalibrationRecord:
    timings = {k: round(v, 1) for k, v in run.timings.items()}
    return CalibrationRecord(config=run.cfg.record(), timings_s=timings)


def _response_step(run: Run, bundle: Bundle) -> Bundle:
    """Step 7: the response probe, on answers the model writes (its refusals steered by ``bundle``)."""
    info, tensors = response_probe(run.host, bundle, run.data, run.calib, run.cfg)
    return Bundle(replace(bundle.manifest, response=info), {**bundle.tensors, **tensors})


def category_strength(run: Run, bundle: Bundle) -> Bundle:
    """Last step: the category vectors' strength, judged on answers (needs the response probe).

    Also run alone: ``scripts/tune_categories.py``.
    """
    from steerguard.evaluation.baselines import MiniLM

    harmful = [run.calib[i] for i in run.harmful_idx]
    return tune_category_strength(run.host, bundle, harmful, run.cfg, MiniLM().embed)


def _final_bundle(run: Run, manifest: Manifest) -> Bundle:
    """Step 6: the chosen steering and the whole record, written into one manifest."""
    assert run.search is not None, "the steering search runs in step 5"
    best, mining, vectors = run.search.best, run.mining, run.vectors
    counts = run.data.summary()
    if mining is not None and mining.examples:
        counts[CALIBRATION][MINED] = len(mining.examples)
    if run.extra:
        counts[CALIBRATION]["follow_up"] = len(run.extra)
    final = replace(
        manifest,
        vectors=_final_vectors(run, vectors, best),
        alternatives={
            ALT_CONTRASTIVE: (
                "contrastive refusal direction (refusing vs complying assistant prefixes), [L, H]"
            ),
            ALT_MEAN: "difference-of-means refusal direction (harmful - benign last-token states), [L, H]",
        },
        steering_search=_search_record(run.cfg, run.search),
        vocab_projection={name: [p.as_dict() for p in proj] for name, proj in vectors.projections.items()},
        data_sources=tuple(DataSource(**s.as_dict()) for s in run.data.sources),
        splits={
            "counts": counts,
            "xstest_train_types": sorted(XSTEST_TRAIN_TYPES),
            "seed": run.cfg.seed,
            "mining": None if mining is None else mining.as_dict(),
        },
        metrics=_metrics(run, best),
        languages=_languages(run.calib),
        passage=run.passage,
        cascade=run.cascade,
        category_content=run.category_content,
        calibration=_record(run),
        note=(
            "Vectors are unit directions per layer; a delta is strength * norms[layer] * vector[layer]. "
            "Alternative refusal directions are stored under alt.* for analysis."
        ),
    )
    return Bundle(final, run.tensors)
