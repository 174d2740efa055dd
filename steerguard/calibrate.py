"""Calibration pipeline: labelled prompts → a :class:`~steerguard.bundle.Bundle`.

Steps (each one's *why* lives in its module):

1. :mod:`steerguard.data` loads and splits the prompts (calibration split only
   is used here; the held-out split is the evaluation's).
2. One forward pass per prompt reads the last-token state at every layer.
3. :mod:`steerguard.probe` picks the probe layer on validation data, fits the
   probe and calibrates its threshold on out-of-fold predictions;
   :mod:`steerguard.mining` then adds the benign pool prompts that this
   first probe scores highest as hard negatives, and the probe is fitted
   again at the same layer (threshold included). A softmax category head is
   fitted on the same standardised state.
4. :mod:`steerguard.vectors` computes the residual norms, the difference-of-
   means and contrastive refusal directions, scores layers by vocabulary
   projection (candidates from the probe layer up, which ``auto`` needs to
   steer a flagged prompt's own positions) and builds the category vectors.
5. A small generation search (AUTO mode, the real serving path) on a few
   calibration prompts picks the refusal variant, its layers and strength:
   the weakest steering that makes the strict judge see a refusal on at least
   ``target_refusal`` of harmful prompts while keeping the steered outputs'
   perplexity under the unsteered model within ``max_ppl_ratio`` of the
   unsteered outputs'.

Deterministic: seeded sampling, deterministic fits, greedy decoding;
``created_at`` honours ``SOURCE_DATE_EPOCH`` so a rebuild can be byte-identical.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerguard import judge, system_prompts
from steerguard.bundle import CATEGORY_PREFIX, FORMAT_VERSION, REFUSAL, Bundle
from steerguard.data import CALIBRATION, HARMFUL, XSTEST_TRAIN_TYPES, Dataset, Example, load_dir
from steerguard.mining import MINED, MiningResult, mine_negatives
from steerguard.model.activations import collect_states
from steerguard.model.chat import Conversation, normalise_request
from steerguard.model.host import ModelHost
from steerguard.probe import ProbeFit, fit_categories, fit_probe
from steerguard.system_prompts import BUILTIN as BUILTIN_SYSTEM_PROMPTS
from steerguard.vectors import (
    candidate_layers,
    category_directions,
    contrastive_direction,
    mean_difference,
    residual_norms,
    vocab_projection,
)

log = logging.getLogger(__name__)

ALT_MEAN = "alt.refusal_mean"


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


ALT_CONTRASTIVE = "alt.refusal_contrastive"


@dataclass
class CalibrationConfig:
    seed: int = 0
    benign_calibration: int = 1000
    benign_heldout: int = 400
    include_copyright: bool = False
    builtin_borderline: bool = True
    # C, hard-negative weight and the hard-recall guard were compared by the
    # leave-one-XSTest-family-out estimate on calibration data (probe.family_holdout).
    probe_c: float = 0.05
    probe_kind: str = "logistic"  # or "mlp"; see steerguard.probe.ProbeSpec for the comparison
    hard_weight: float = 3.0
    min_recall: float = 0.92
    min_hard_recall: float = 0.9
    max_benign_fpr: float = 0.02
    # Hard negatives mined from the benign pool (steerguard.mining): the highest-scoring
    # ``mine_negatives`` of ``mine_pool`` pool prompts under a first probe; 0 turns it off.
    mine_negatives: int = 200
    mine_pool: int = 4000
    contrastive_prompts: int = 16
    norm_prompts: int = 48
    tune_harmful: int = 64  # 24 gave a 100% refusal estimate for a setting at 81% on 64
    # Directions searched (both are always computed and stored). Difference of
    # means refused 0-4% at every strength on SmolLM2, so by default only the
    # contrastive direction is searched; add "mean_difference" for other models.
    search_variants: tuple[str, ...] = ("contrastive",)
    tune_tokens: int = 48  # as many as the evaluation generates, so the judge sees the same openings
    # Up to 0.25: with the probe at layer 17 (system-prompt copies) steering starts at
    # layer 19, and 0.175 (the earlier top) refused 81% in the search; 0.205 refused 91%.
    strengths: tuple[float, ...] = tuple(round(0.1 + 0.015 * i, 3) for i in range(11))
    # Gains on a refusal-steered row's prompt positions (see steerguard.model.steering), highest first.
    prompt_gains: tuple[float, ...] = (1.5, 1.0)
    layer_counts: tuple[int, ...] = (3,)
    # Steering layers come from this band of depth and, when steer_from_probe, from the
    # probe layer up: a layer below the probe cannot steer a gated prompt in ``auto``.
    # With the probe at 16, layers [10, 15, 18] refused 70% in the search and
    # [16, 19, 23] 94% (at a lower perplexity ratio, 1.55): hence a band reaching 0.8.
    layer_band: tuple[float, float] = (0.3, 0.8)
    steer_from_probe: bool = True
    target_refusal: float = 0.9
    max_ppl_ratio: float = 1.9
    category_strength: float = 0.1  # fluent (ppl ratio ~1.7) on a spot check; 0.5 breaks the model
    batch_size: int = 16
    progress: bool = True
    use_cache: bool = True
    # Each probe row is also fitted as a copy under one of these system prompts
    # (steerguard.system_prompts); empty: the chat template's default only.
    system_prompts: tuple[str, ...] = BUILTIN_SYSTEM_PROMPTS


@dataclass
class TuneResult:
    variant: str
    layers: list[int]
    strength: float
    refusal: float
    ppl_ratio: float
    samples: list[str] = field(default_factory=list)
    prompt_gain: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "layers": self.layers,
            "strength": self.strength,
            "prompt_gain": self.prompt_gain,
            "refusal_rate": round(self.refusal, 4),
            "ppl_ratio": round(self.ppl_ratio, 4),
        }


def activation_cache_path(host: ModelHost, layers: Sequence[int] | None = None) -> Path:
    from steerguard.model.paths import cache_dir

    tag = f"L{host.loaded_layers}" if layers is None else "layers-" + "-".join(str(i) for i in layers)
    return cache_dir() / "activations" / f"{host.identity.sha256[:16]}-{tag}.pt"


def cached_states(
    host: ModelHost,
    convs: Sequence[Conversation],
    *,
    batch_size: int,
    progress: bool,
    use_cache: bool = True,
    layers: Sequence[int] | None = None,
    desc: str = "calibration states",
) -> torch.Tensor:
    """Last-token states ``[N, layers, H]`` (every layer by default), memoised on disk per conversation.

    Recalibrating after a change of thresholds, weights or a few added prompts
    then costs only the new prompts' forward passes. A subset of layers (the
    mining pool is scored at the probe layer only) runs with early exit and
    has a memo of its own.
    """
    wanted = list(range(host.loaded_layers)) if layers is None else sorted(set(layers))
    path = activation_cache_path(host, None if layers is None else wanted)
    memo: dict[str, torch.Tensor] = {}
    if use_cache and path.is_file():
        try:
            memo = torch.load(path, weights_only=True)
        except Exception:  # a corrupt cache is only a slower run
            memo = {}
    keys = [c.digest() for c in convs]
    missing = sorted({k: i for i, k in enumerate(keys) if k not in memo}.values())
    if missing:
        found = collect_states(
            host,
            [convs[i] for i in missing],
            wanted,
            batch_size=batch_size,
            progress=progress,
            desc=desc,
        )
        for j, i in enumerate(missing):
            memo[keys[i]] = torch.stack([found[layer][j] for layer in wanted]).clone()
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(memo, tmp)
            tmp.replace(path)
    return torch.stack([memo[k] for k in keys]).float()


def _convs(examples: Sequence[Example]) -> list[Conversation]:
    return [normalise_request(e.prompt) for e in examples]


def _system_convs(examples: Sequence[Example], prompts: Sequence[str]) -> list[Conversation]:
    """Each example under the system prompt :func:`steerguard.system_prompts.pick` gives it."""
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


def _bundle_with(
    base: Bundle, direction: torch.Tensor, layers: Sequence[int], strength: float, prompt_gain: float = 1.0
) -> Bundle:
    """A copy of ``base`` whose refusal vector is ``direction`` at ``layers``/``strength``/``prompt_gain``."""
    manifest = dict(base.manifest)
    vectors = dict(manifest["vectors"])
    vectors[REFUSAL] = {
        **vectors.get(REFUSAL, {}),
        "layers": list(layers),
        "strength": float(strength),
        "prompt_gain": float(prompt_gain),
    }
    manifest["vectors"] = vectors
    tensors = dict(base.tensors)
    tensors[f"vector.{REFUSAL}"] = direction
    return Bundle(manifest, tensors)


def tune_refusal(
    host: ModelHost,
    base: Bundle,
    variants: dict[str, tuple[torch.Tensor, list[int]]],
    harmful: Sequence[Conversation],
    cfg: CalibrationConfig,
) -> tuple[TuneResult, list[TuneResult], float]:
    """Search variant x layer set x prompt gain x strength with AUTO generation.

    Returns (best, all tried, unsteered perplexity). For each variant and
    gain, strengths rise until the target refusal rate is met or fluency is
    lost. Gains go from highest down, and a lower gain is tried only when a
    higher one reached the target but lost fluency on the way (the prompt
    gain is what buys refusals without the decode-time strength that costs
    fluency). Among the settings that meet both limits, the most fluent wins.
    """
    from steerguard.offline import generate_many, perplexity
    from steerguard.plan import Mode, SteeringRequest

    plain = generate_many(
        host, None, harmful, [SteeringRequest(Mode.NONE)] * len(harmful), max_new_tokens=cfg.tune_tokens
    )
    base_ppl = perplexity(host, harmful, [g.token_ids for g in plain])
    tried: list[TuneResult] = []
    auto = [SteeringRequest(Mode.AUTO)] * len(harmful)
    for name, (direction, ranked) in variants.items():
        if name not in cfg.search_variants:
            continue
        for count in cfg.layer_counts:
            layers = sorted(ranked[:count])
            for gain in sorted(cfg.prompt_gains, reverse=True):
                reached = False
                for s in cfg.strengths:
                    b = _bundle_with(base, direction, layers, s, gain)
                    outs = generate_many(host, b, harmful, auto, max_new_tokens=cfg.tune_tokens)
                    texts = [g.text for g in outs]
                    ppl = perplexity(host, harmful, [g.token_ids for g in outs])
                    refusal = judge.refusal_rate(texts)
                    r = TuneResult(name, layers, s, refusal, ppl / base_ppl, texts[:3], gain)
                    tried.append(r)
                    log.info("tune %s", r.as_dict())
                    reached = r.refusal >= cfg.target_refusal
                    if reached or r.ppl_ratio > cfg.max_ppl_ratio:
                        break  # weakest strength that works, or fluency already lost
                if not reached or r.ppl_ratio <= cfg.max_ppl_ratio:
                    break  # out of reach for lower gains, or met: a lower gain needs more strength
    ok = [t for t in tried if t.refusal >= cfg.target_refusal and t.ppl_ratio <= cfg.max_ppl_ratio]
    if ok:
        best = min(ok, key=lambda t: (t.ppl_ratio, t.strength * len(t.layers)))
    else:
        fluent = [t for t in tried if t.ppl_ratio <= cfg.max_ppl_ratio] or tried
        best = max(fluent, key=lambda t: (t.refusal, -t.strength))
    return best, tried, base_ppl


def calibrate(
    data_dir: str | Path,
    *,
    model_path: str | None = None,
    host: ModelHost | None = None,
    config: CalibrationConfig | None = None,
    dataset: Dataset | None = None,
) -> Bundle:
    """Run the whole pipeline and return an (unsaved) bundle."""
    cfg = config or CalibrationConfig()
    t0 = time.time()
    timings: dict[str, float] = {}
    torch.manual_seed(cfg.seed)
    data = dataset or load_dir(
        data_dir,
        seed=cfg.seed,
        benign_calibration=cfg.benign_calibration,
        benign_heldout=cfg.benign_heldout,
        include_copyright=cfg.include_copyright,
        builtin=cfg.builtin_borderline,
    )
    host = host or ModelHost.load(model_path)
    n_layers = host.loaded_layers
    calib = data.select(CALIBRATION)
    if not any(e.label == HARMFUL for e in calib) or all(e.label == HARMFUL for e in calib):
        from steerguard.errors import DataError

        raise DataError("calibration needs both harmful and benign prompts")

    # 2. states at every layer
    convs = _convs(calib)
    stacked = cached_states(
        host, convs, batch_size=cfg.batch_size, progress=cfg.progress, use_cache=cfg.use_cache
    )
    states = {layer: stacked[:, layer] for layer in range(n_layers)}
    timings["states_s"] = time.time() - t0
    labels = np.array([e.label for e in calib])
    kinds = [e.kind for e in calib]
    np_states = {layer: states[layer].numpy() for layer in range(n_layers)}

    # 3. probe (with hard negatives mined from the benign pool) and category head
    t = time.time()
    groups = [xstest_family(e.group) for e in calib]
    # Probe rows: the calibration prompts, then (with system prompts) their copies under one
    # each; ``clusters`` keeps a prompt's copies in one fold. Vectors and the category head
    # use the template's own rows only.
    copies = bool(cfg.system_prompts)
    probe_states = np_states
    if copies:
        extra = cached_states(
            host,
            _system_convs(calib, cfg.system_prompts),
            batch_size=cfg.batch_size,
            progress=cfg.progress,
            use_cache=cfg.use_cache,
            desc="system-prompt copies",
        ).numpy()
        probe_states = {
            layer: np.concatenate([np_states[layer], extra[:, layer]]) for layer in range(n_layers)
        }

    def doubled(values: list[Any]) -> list[Any]:
        return values + values if copies else values

    clusters = doubled([e.key for e in calib]) if copies else None

    def fit_on(
        rows: dict[int, np.ndarray],
        row_labels: np.ndarray,
        row_kinds: list[str],
        row_groups: list[str | None] | None,
        layer: int | None = None,
        clusters: list[str] | None = None,
    ) -> ProbeFit:
        return fit_probe(
            rows,
            row_labels,
            row_kinds,
            seed=cfg.seed,
            c=cfg.probe_c,
            hard_weight=cfg.hard_weight,
            min_recall=cfg.min_recall,
            min_hard_recall=cfg.min_hard_recall,
            max_benign_fpr=cfg.max_benign_fpr,
            groups=row_groups,
            kind=cfg.probe_kind,
            layer=layer,
            clusters=clusters,
        )

    mine = cfg.mine_negatives > 0 and bool(data.pool)
    # With mining the first fit is replaced, so its family-holdout estimate would be thrown away.
    fit = fit_on(
        {layer: probe_states[layer] for layer in range(1, n_layers)},
        np.array(doubled(labels.tolist())),
        doubled(kinds),
        None if mine else doubled(groups),
        clusters=clusters,
    )
    mining: MiningResult | None = None
    if mine:
        t_mine = time.time()
        mining = mine_negatives(
            host,
            fit.probe,
            fit.layer,
            fit.threshold.threshold,
            data.pool,
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
        mined_convs = _convs(mined) + (_system_convs(mined, cfg.system_prompts) if copies else [])
        mined_states = cached_states(
            host,
            mined_convs,
            batch_size=cfg.batch_size,
            progress=False,
            use_cache=cfg.use_cache,
            layers=[fit.layer],
        )[:, 0].numpy()
        layer_scores = fit.layer_scores
        fit = fit_on(
            {fit.layer: np.concatenate([probe_states[fit.layer], mined_states])},
            np.array(doubled(labels.tolist()) + doubled([e.label for e in mined])),
            doubled(kinds) + doubled([e.kind for e in mined]),
            doubled(groups) + doubled([None] * len(mined)),
            layer=fit.layer,
            clusters=None if clusters is None else clusters + doubled([e.key for e in mined]),
        )
        fit.layer_scores = layer_scores
        timings["mining_s"] = time.time() - t_mine
    probe_layer = fit.layer
    standard = (fit.probe.mean, fit.probe.std)
    harmful_idx = [i for i, e in enumerate(calib) if e.label == HARMFUL]
    cat_idx = [i for i in harmful_idx if calib[i].category]
    categories = sorted({str(calib[i].category) for i in cat_idx})
    tensors: dict[str, torch.Tensor] = {
        "probe.mean": torch.from_numpy(fit.probe.mean),
        "probe.std": torch.from_numpy(fit.probe.std),
        **fit.probe.tensors("probe"),
    }
    if len(categories) >= 2:
        cls = np.array([categories.index(str(calib[i].category)) for i in cat_idx])
        head = fit_categories(np_states[probe_layer][cat_idx], cls, len(categories), standard)
        tensors.update(head.tensors("category"))
        train_acc = float((head.predict_classes(np_states[probe_layer][cat_idx]).argmax(1) == cls).mean())
    else:
        categories, train_acc = [], float("nan")
    timings["probe_s"] = time.time() - t

    # 4. vectors
    t = time.time()
    rng_pool = [calib[i] for i in range(len(calib))]
    norm_set = _sample(rng_pool, cfg.norm_prompts, cfg.seed + 11)
    norms = residual_norms(host, _convs(norm_set), batch_size=cfg.batch_size)
    tensors["norms"] = norms
    all_states = torch.stack([states[layer] for layer in range(n_layers)], dim=1)  # [N, L, H]
    benign_idx = [i for i, e in enumerate(calib) if e.label != HARMFUL and e.kind == "benign"]
    mean_dir = mean_difference(all_states[harmful_idx], all_states[benign_idx])
    contrast_set = _sample([calib[i] for i in harmful_idx], cfg.contrastive_prompts, cfg.seed + 12) + _sample(
        [calib[i] for i in benign_idx], cfg.contrastive_prompts, cfg.seed + 13
    )
    contrast_dir = contrastive_direction(
        host, _convs(contrast_set), batch_size=cfg.batch_size, progress=cfg.progress
    )
    projections = {
        "contrastive": vocab_projection(host, contrast_dir, norms),
        "mean_difference": vocab_projection(host, mean_dir, norms),
    }
    lo, hi = cfg.layer_band
    ranked = {
        name: candidate_layers(
            proj,
            n_layers,
            count=max(cfg.layer_counts),
            lo=lo,
            hi=hi,
            floor=probe_layer if cfg.steer_from_probe else 0,
        )
        for name, proj in projections.items()
    }
    cat_vectors = category_directions(
        all_states[harmful_idx], [calib[i].category for i in harmful_idx], all_states[benign_idx], categories
    )
    timings["vectors_s"] = time.time() - t

    # provisional bundle (used by the strength search through the real serving path)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created_at": _created_at(),
        "model": host.identity.as_dict(),
        "probe": {
            "layer": probe_layer,
            "threshold": float(fit.threshold.threshold),
            **fit.spec.describe(),
            "features": "last prompt token, standardised (probe.mean/probe.std)",
            "c": cfg.probe_c,  # the logistic C (layer selection always fits logistic probes)
            "hard_negative_weight": cfg.hard_weight,
            "threshold_rule": fit.threshold.rule,
            "oof": {**fit.threshold.as_dict(), "auroc": round(fit.oof_auroc, 6)},
            "layer_selection": [s.as_dict() for s in fit.layer_scores],
            **(
                {
                    "system_prompts": {
                        "count": len(cfg.system_prompts),
                        "probe_rows": 0 if fit.oof_scores is None else len(fit.oof_scores),
                        "copies": "every probe row once more, under the system prompt its text hash picks",
                    }
                }
                if copies
                else {}
            ),
        },
        "categories": categories,
        "vectors": {REFUSAL: {"layers": ranked["contrastive"][:3], "strength": 1.0}},
        "policy": {"default": REFUSAL, "per_category": {}},
    }
    tensors[f"vector.{REFUSAL}"] = contrast_dir
    base = Bundle(manifest, tensors)

    # 5. strength search
    t = time.time()
    tune_h = _sample(
        [calib[i] for i in harmful_idx if calib[i].kind == "harmful"], cfg.tune_harmful, cfg.seed + 21
    )
    variants = {
        "contrastive": (contrast_dir, ranked["contrastive"]),
        "mean_difference": (mean_dir, ranked["mean_difference"]),
    }
    best, tried, base_ppl = tune_refusal(host, base, variants, _convs(tune_h), cfg)
    timings["tune_s"] = time.time() - t
    chosen_dir = mean_dir if best.variant == "mean_difference" else contrast_dir
    tensors[f"vector.{REFUSAL}"] = chosen_dir.clone()
    tensors[ALT_CONTRASTIVE] = contrast_dir.clone()
    tensors[ALT_MEAN] = mean_dir.clone()
    vectors: dict[str, Any] = {
        REFUSAL: {
            "layers": best.layers,
            "strength": best.strength,
            "prompt_gain": best.prompt_gain,
            "method": best.variant,
            "orientation": "adding (sign +1) steers toward refusal",
        }
    }
    for cat, vec in cat_vectors.items():
        tensors[f"vector.{CATEGORY_PREFIX}{cat}"] = vec.contiguous().clone()
        vectors[f"{CATEGORY_PREFIX}{cat}"] = {
            "layers": best.layers,
            "strength": cfg.category_strength,
            "method": "category mean - benign mean, shared harmful direction removed, negated (SafeSteer)",
            "orientation": "adding (sign +1) steers away from the category's features",
        }
    manifest["vectors"] = vectors
    manifest["alternatives"] = {
        ALT_CONTRASTIVE: "contrastive refusal direction (refusing vs complying assistant prefixes), [L, H]",
        ALT_MEAN: "difference-of-means refusal direction (harmful - benign last-token states), [L, H]",
    }
    manifest["steering_search"] = {
        "harmful_prompts": len(tune_h),
        "max_new_tokens": cfg.tune_tokens,
        "unsteered_ppl": round(base_ppl, 4),
        "chosen": best.as_dict(),
        "tried": [r.as_dict() for r in tried],
        "judge": "steerguard.judge (strict: explicit refusal in the opening, no pivot to compliance)",
        "rule": (
            f"most fluent steering with refusal >= {cfg.target_refusal} and ppl ratio <= {cfg.max_ppl_ratio}"
        ),
    }
    manifest["vocab_projection"] = {name: [p.as_dict() for p in proj] for name, proj in projections.items()}
    manifest["data_sources"] = [s.as_dict() for s in data.sources]
    counts = data.summary()
    if mining is not None and mining.examples:
        counts[CALIBRATION][MINED] = len(mining.examples)
    manifest["splits"] = {
        "counts": counts,
        "xstest_train_types": sorted(XSTEST_TRAIN_TYPES),
        "seed": cfg.seed,
        "mining": None if mining is None else mining.as_dict(),
    }
    manifest["metrics"] = {
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
    config_dict = asdict(cfg)
    config_dict.pop("progress", None)
    # Without copies the manifest keeps the form it had before copies existed (no empty
    # entry), so such bundles and their ids compare with earlier ones setting for setting.
    if not copies:
        config_dict.pop("system_prompts", None)
    manifest["calibration"] = {
        "config": config_dict,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    manifest["note"] = (
        "Vectors are unit directions per layer; a delta is strength * norms[layer] * vector[layer]. "
        "Alternative refusal directions are stored under alt.* for analysis."
    )
    bundle = Bundle(manifest, tensors)
    log.info("calibrated in %.0f s", time.time() - t0)
    return bundle
