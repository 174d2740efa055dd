"""The calibration settings: the only home of their defaults.

Every layer reads them from here: the pipeline, the probe fits, the CLI's
flags (``steerguard calibrate``) and ``steerguard eval``, which rebuilds
calibration's splits from the settings a bundle records. :data:`DEFAULTS` is
the default configuration; functions that take one setting default to its
field, so no number is stated twice.

This module imports nothing heavy (the CLI reads it while building its parser).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from steerguard.data.answers import ANSWER_TOKENS
from steerguard.data.loaders import SPLITS, Dataset, load_dir
from steerguard.data.system_prompts import BUILTIN as BUILTIN_SYSTEM_PROMPTS
from steerguard.passages import PASSAGE_OVERLAP, PASSAGE_TOKENS


@dataclass(frozen=True)
class CalibrationConfig:
    seed: int = SPLITS.seed
    benign_calibration: int = SPLITS.benign_calibration
    benign_heldout: int = SPLITS.benign_heldout
    include_copyright: bool = SPLITS.include_copyright
    builtin_borderline: bool = SPLITS.builtin
    # C, hard-negative weight and the hard-recall guard were compared by the
    # leave-one-XSTest-family-out estimate on calibration data (selection.family_holdout).
    probe_c: float = 0.05
    probe_kind: str = "logistic"  # or "mlp"; see steerguard.calibration.probe.ProbeSpec for the comparison
    hard_weight: float = 3.0
    min_recall: float = 0.92
    min_hard_recall: float = 0.9
    max_benign_fpr: float = 0.02
    # Hard negatives mined from the benign pool (steerguard.calibration.mining): the highest-scoring
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
    # The category vectors' strength searched instead (steerguard.calibration.category_tune):
    # AUTO answers this many harmful calibration prompts per category with the verdict's
    # category vector at each strength, judged by steerguard.answer_judge; 0: category_strength.
    category_tune_per_category: int = 8
    category_tune_strengths: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3)
    batch_size: int = 16
    progress: bool = True
    use_cache: bool = True
    # Each probe row is also fitted as a copy under one of these system prompts
    # (steerguard.data.system_prompts); empty: the chat template's default only.
    system_prompts: tuple[str, ...] = BUILTIN_SYSTEM_PROMPTS
    # Follow-up turns (steerguard.data.follow_ups.CALIBRATION) fitted as benign probe rows.
    follow_ups: bool = True
    # The passage probe (steerguard.calibration.passages): documents without a harmful
    # request beside one per harmful prompt; 0 fits none (long texts read in windows only).
    passage_benign_docs: int = 500
    passage_copies: int = 1  # documents per harmful prompt, each placing it anew
    # Benign prompts per document, drawn uniformly (4-60: about 40-600 tokens).
    passage_prompts: tuple[int, int] = (4, 60)
    # Layers searched for the passage probe, as fractions of depth (SmolLM2: 10).
    passage_depths: tuple[float, ...] = (0.35,)
    passage_c: float = 0.03  # the passage head's L2 strength (logistic C)
    # Shallower layers whose segment states the head also reads, beside the chosen layer's
    # (fractions of depth; SmolLM2: 6 and 8; free, since a passage's pass runs through them;
    # empty: one layer). Chosen on calibration documents (docs/calibration.md).
    passage_feature_depths: tuple[float, ...] = (0.2167, 0.2833)
    # Prose documents (steerguard.data.prose): the model's answers to this many pool
    # prompts, joined 2-8 at a time; documents per harmful prompt, and without one.
    passage_prose_answers: int = 240
    passage_prose_parts: tuple[int, int] = (2, 8)
    passage_prose_copies: int = 1
    passage_prose_docs: int = 500
    passage_tokens: int = PASSAGE_TOKENS
    passage_overlap: int = PASSAGE_OVERLAP
    passage_reference_tokens: int = 3000
    passage_max_document_flagged: float = 0.02
    # The passage gate (steerguard.calibration.passage_gate): on, its L2 strength, the share
    # of benign prose paragraphs and sentences it may flag out of fold; then what reads
    # candidates again (steerguard.passages): the passage score a window's top segment end
    # needs (on the probe's scale; the text's last paragraph is always read) and the longest
    # candidate in tokens. Chosen on calibration documents (docs/calibration.md).
    passage_gate: bool = True
    passage_gate_c: float = 0.03
    passage_gate_flagged: float = 0.005
    passage_candidate_floor: float = 0.001
    passage_candidate_tokens: int = 48
    # The share of borderline and XSTest-safe calibration prompts (out of fold) a candidate may
    # flag: its cut (PassageInfo.candidate_cut) is set there, never below the threshold nor
    # where fewer than min_recall of harmful prompts pass it. A tenth: half the lone turn's
    # rate at the threshold (18% of them out of fold), so a document's candidates and its
    # passage head together stay under the 15% a lone turn is held to (docs/calibration.md).
    passage_candidate_flagged: float = 0.1
    # The response probe (steerguard.calibration.responses): the model's answers
    # (steerguard.data.answers) to this many harmful calibration prompts, unsteered and
    # refusal-steered, and to ordinary pool and borderline/XSTest-safe prompts; 0 fits none.
    response_harmful: int = 200
    response_ordinary: int = 200
    response_borderline: int = 100
    response_tokens: int = ANSWER_TOKENS  # new tokens per answer (refusals: half)
    # Layers searched for the response probe, as fractions of depth (SmolLM2: 10, 15, 18, 22).
    response_depths: tuple[float, ...] = (0.35, 0.5, 0.6, 0.75)
    response_c: float = 0.01  # the response head's L2 strength (logistic C)
    # Also score complied and benign answers continued after a follow-up turn
    # (steerguard.data.answers.continued), read in the request view, out of fold: the
    # manifest's record of what the heads do in that shape (ResponseInfo.follow_ups).
    response_follow_ups: bool = True
    # The cut flags at most this share of safe answers, out of fold (target: 3%).
    response_max_benign_flagged: float = 0.02

    # The early exit (steerguard.calibration.cascade), fitted only when ``cascade`` is set (or
    # by scripts/fit_cascade.py): off by default, since on the default bundle it let 5 of 100
    # held-out XSTest unsafe prompts leave early (87 -> 82 caught, under the 85% target;
    # docs/benchmarks.md). Layers tried, as fractions of the probe layer's depth (probe at 18:
    # 1, 3, 5, 7, 9); at most this share of the harmful rows the probe catches (out of fold)
    # may leave early.
    cascade: bool = False
    # The classifier's category head on the mean state over the last user turn's words
    # (steerguard.calibration.categories); off: the last-token head serves categories.
    category_content: bool = True
    # The built-in category requests (steerguard.data.category_requests) and the project's
    # labels for unlabelled harmful calibration prompts (steerguard.data.category_labels) join
    # the content head's fit, never its cross-validation's test folds: 5-fold top-1 on the
    # default split 67.8% -> 69.4% (requests) -> 72.6% (both).
    category_content_extra: bool = True
    # The content head abstains ("unsure": the policy's default rule applies, not the
    # category's) below the lowest cut on its top probability at which out-of-fold top-1 on
    # the labelled calibration prompts it keeps reaches this accuracy (the target is 80%; the
    # margin covers the shift from calibration's sources to unseen prompts), abstaining on
    # at most this share (steerguard.calibration.categories.unsure_cut). Chosen on
    # calibration folds only (docs/calibration.md).
    category_content_unsure_accuracy: float = 0.85
    category_content_unsure_max: float = 0.3
    cascade_depths: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
    cascade_max_unsafe_exit: float = 0.005
    # The refusal head (steerguard.calibration.refusal_head, SafeSwitch): a rank-r delta on
    # the LM head fitted on each harmful calibration prompt's refusal; rank 0 fits none.
    # Its text: "steered", the model's own most fluent refusal under the calibrated vector
    # (steerguard.calibration.steered_refusals; schedules: (decode steps at full strength,
    # then gain), 0 steps: full throughout), or "templates" (refusal_head_copies per prompt).
    # Steered text, on a fifth of calibration's prompts held apart from the fit: 97.8%
    # refused at a 1.39x perplexity ratio with these six schedules (1.52x with the first
    # three), templates 100% at 15.8x (docs/calibration.md).
    refusal_head_rank: int = 16
    refusal_head_text: str = "steered"
    refusal_head_schedules: tuple[tuple[int, float], ...] = (
        (0, 1.0),
        (8, 0.5),
        (8, 0.7),
        (8, 0.3),
        (16, 0.5),
        (4, 0.6),
    )
    refusal_head_copies: int = 4
    refusal_head_epochs: int = 8
    refusal_head_lr: float = 3e-3
    # Whether the bundle's policy answers flagged prompts with the head (auto's default)
    # rather than the refusal vector. On calibration's prompts the head refused more, more
    # fluently (97.8% at 1.52x) than the calibrated vector (90.6% at 1.64x, the steering
    # search): docs/calibration.md. Without a head the policy names the vector.
    refusal_head_policy: bool = True

    def record(self) -> dict[str, Any]:
        """The settings as the manifest records them (``calibration.config``).

        ``progress`` is left out (it changes no number). Without system-prompt
        copies the entry is left out too, so such bundles and their ids compare
        with those made before copies existed, setting for setting.
        """
        out = asdict(self)
        out.pop("progress", None)
        if not self.system_prompts:
            out.pop("system_prompts", None)
        return out

    def load_data(self, root: str | Path) -> Dataset:
        """The data under ``root``, split as these settings split it (calibration and eval agree)."""
        return load_dir(
            root,
            seed=self.seed,
            benign_calibration=self.benign_calibration,
            benign_heldout=self.benign_heldout,
            include_copyright=self.include_copyright,
            builtin=self.builtin_borderline,
        )

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> CalibrationConfig:
        """The settings a bundle recorded; a setting it predates takes today's default."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: _tuples(v) for k, v in record.items() if k in known})


def _tuples(value: Any) -> Any:
    """JSON's lists as the tuples the settings hold, nested ones too (e.g. the head's schedules)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class ProbeFitDefaults:
    """Settings of the probe fits that no flag exposes; read by the fit functions' defaults.

    Layer selection judges each layer at its own cut under looser guards
    (``selection_min_hard_recall``) than the final threshold: with few
    validation rows a strict guard would reject most layers outright.
    """

    selection_min_hard_recall: float = 0.85
    val_fraction: float = 0.3
    fpr_penalty: float = 0.5
    layer_tolerance: float = 0.005
    folds: int = 5
    # The response probe's two cuts: each head's share of the false-flag budget is tried at
    # this many evenly spaced values from 0 to the whole budget (steerguard.calibration.responses).
    cut_grid: int = 13
    category_c: float = 0.1
    # The content category head's L2 strength: the best 5-fold top-1 on the default
    # calibration split among 0.003-0.1 (0.69; docs/calibration.md).
    category_content_c: float = 0.03
    mlp_hidden: int = 64
    mlp_members: int = 3
    mlp_weight_decay: float = 0.1
    mlp_dropout: float = 0.2
    mlp_epochs: int = 300
    mlp_lr: float = 3e-3


DEFAULTS = CalibrationConfig()
FIT = ProbeFitDefaults()
