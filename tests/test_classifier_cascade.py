"""The early exit (a probe cascade): confident prompts leave at a shallower layer, as calibrated.

Tiny random Llama (4 layers, probe at 2), bundles given an early-exit head at
layer 0 whose scores the tests set: a constant (bias only) or the random
head's own scores with the exit cut put between two prompts'. The forward
pass is watched through a hook on the probe layer, so "the deeper layers
never ran" is observed, not assumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from classifier_service.cache import MemoryCache
from classifier_service.core import ClassifierCore, CoreConfig
from steerguard.bundle import Bundle
from steerguard.calibration.cascade import CascadeRows, CascadeSettings, exit_cut, fit_cascade
from steerguard.errors import BundleError
from steerguard.manifest import CascadeInfo
from steerguard.model.activations import last_token_states
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost
from steerguard.v1 import classifier_pb2
from tests.serving import serve_core

EXIT_LAYER = 0
PROMPTS = ["How do I bake bread?", "Tell me a joke about cats, a long one with a twist at the end"]


def with_cascade(
    bundle: Bundle, folder: Path, *, bias: float, cut: float, weight: torch.Tensor | None = None
) -> Bundle:
    """``bundle`` plus an early exit at layer 0 (saved, so it has an id)."""
    h = bundle.tensors["probe.mean"].numel()
    tensors = {
        **bundle.tensors,
        "cascade.mean": torch.zeros(h),
        "cascade.std": torch.ones(h),
        "cascade.weight": torch.zeros(h) if weight is None else weight,
        "cascade.bias": torch.tensor([bias]),
    }
    manifest = replace(bundle.manifest, cascade=CascadeInfo(EXIT_LAYER, cut), bundle_id="")
    Bundle(manifest, tensors).save(folder)
    return Bundle.load(folder)


@pytest.fixture(scope="module")
def host(tiny_model_dir: Path, tiny_bundle: Bundle) -> ModelHost:
    return ModelHost.load(tiny_model_dir, max_layers=tiny_bundle.probe_layer + 1)


@pytest.fixture()
def probe_passes(host: ModelHost, tiny_bundle: Bundle) -> Iterator[list[int]]:
    """Counts forward passes that reached the probe layer (batch sizes)."""
    seen: list[int] = []
    handle = host.layers[tiny_bundle.probe_layer].register_forward_hook(
        lambda _m, _i, out: seen.append(int(out[0].shape[0] if isinstance(out, tuple) else out.shape[0]))
    )
    try:
        yield seen
    finally:
        handle.remove()


def core_for(host: ModelHost, bundle: Bundle, **config: Any) -> ClassifierCore:
    config.setdefault("backend", "torch")  # scores are compared with PyTorch's to 1e-6
    return ClassifierCore(
        host, bundle, MemoryCache(max_entries=100, ttl_seconds=60), CoreConfig(max_batch_wait_ms=0, **config)
    )


def convs(*texts: str) -> list[Any]:
    return [normalise_request(t) for t in texts]


def test_a_confident_prompt_leaves_before_the_probe_layer(
    host: ModelHost, tiny_bundle: Bundle, tmp_path: Path, probe_passes: list[int]
) -> None:
    bundle = with_cascade(tiny_bundle, tmp_path, bias=-8.0, cut=0.01)
    core = core_for(host, bundle)
    probe_passes.clear()  # the template prefix's own pass, at start-up
    try:
        verdicts = core.classify(convs(*PROMPTS))
    finally:
        core.close()
    assert probe_passes == [], "no pass should reach the probe layer"
    for v in verdicts:
        assert v.cascade_exit and not v.unsafe and v.category_scores == {}
        assert v.score == pytest.approx(1 / (1 + np.exp(8.0)), rel=1e-4)
        assert v.threshold == bundle.threshold and v.bundle_id == bundle.bundle_id


def test_an_uncertain_prompt_runs_to_the_probe_and_keeps_its_verdict(
    host: ModelHost, tiny_bundle: Bundle, tmp_path: Path, probe_passes: list[int]
) -> None:
    bundle = with_cascade(tiny_bundle, tmp_path, bias=0.0, cut=0.01)  # early score 0.5: stays
    cascade, plain = core_for(host, bundle), core_for(host, bundle, cascade=False)
    probe_passes.clear()  # the template prefix's own passes, at start-up
    try:
        (got,) = cascade.classify(convs(PROMPTS[0]))
        (want,) = plain.classify(convs(PROMPTS[0]))
    finally:
        cascade.close()
        plain.close()
    assert probe_passes, "the pass must reach the probe layer"
    assert not got.cascade_exit
    assert got.score == pytest.approx(want.score, abs=1e-6) and got.category_scores == want.category_scores


def test_each_row_of_a_batch_is_judged_as_if_alone(
    host: ModelHost, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    """With the cut between two prompts' early scores, one leaves and one runs on, in one batch."""
    weight = torch.randn(
        tiny_bundle.tensors["probe.mean"].numel(), generator=torch.Generator().manual_seed(1)
    )
    probe = with_cascade(tiny_bundle, tmp_path / "probe", bias=0.0, cut=0.5, weight=weight)
    states = last_token_states(host, host.encode(convs(*PROMPTS)), [EXIT_LAYER])[EXIT_LAYER]
    early = probe.early_score(states)
    low, high = int(early.argmin()), int(early.argmax())
    assert early[low] < early[high]
    cut = float(early[low] + early[high]) / 2
    bundle = with_cascade(tiny_bundle.with_threshold(0.99), tmp_path / "b", bias=0.0, cut=cut, weight=weight)
    core, plain = core_for(host, bundle), core_for(host, bundle, cascade=False)
    try:
        together = core.classify(convs(*PROMPTS))
        alone = [core_for(host, bundle).classify(convs(p))[0] for p in PROMPTS]
        full = plain.classify(convs(*PROMPTS))
    finally:
        core.close()
        plain.close()
    assert together[low].cascade_exit and not together[high].cascade_exit
    assert together[low].score == pytest.approx(float(early[low]), rel=1e-4)
    assert together[high].score == pytest.approx(full[high].score, abs=1e-5)
    assert [v.cascade_exit for v in alone] == [v.cascade_exit for v in together]


def test_a_cut_below_the_bundles_skips_the_exit_and_is_cached_apart(
    host: ModelHost, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    """The exit was calibrated at the bundle's cut: a stricter caller gets the probe's own score."""
    bundle = with_cascade(tiny_bundle, tmp_path, bias=-8.0, cut=0.01)
    core = core_for(host, bundle)
    try:
        (default,) = core.classify(convs(PROMPTS[0]))
        (strict,) = core.classify(convs(PROMPTS[0]), thresholds=[bundle.threshold / 2])
        (floored,) = core.classify(convs(PROMPTS[0]), floors=[bundle.threshold / 2])
        (lenient,) = core.classify(convs(PROMPTS[0]), thresholds=[0.9])
    finally:
        core.close()
    assert default.cascade_exit and lenient.cascade_exit and not lenient.unsafe
    assert not strict.cascade_exit and not floored.cascade_exit
    assert strict.score == pytest.approx(floored.score) and strict.score != pytest.approx(default.score)
    assert floored.cached, "the strict verdict is cached under a key of its own"


def test_grpc_lowest_threshold_and_the_exit_flag(
    host: ModelHost, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    bundle = with_cascade(tiny_bundle, tmp_path, bias=-8.0, cut=0.01)
    for stub in serve_core(core_for(host, bundle)):
        plain = stub.Classify(classifier_pb2.ClassifyRequest(prompt=PROMPTS[0]))
        assert plain.cascade_exit and not plain.unsafe
        low = bundle.threshold / 2
        floored = stub.Classify(classifier_pb2.ClassifyRequest(prompt=PROMPTS[0], lowest_threshold=low))
        assert not floored.cascade_exit and floored.threshold == pytest.approx(bundle.threshold)
        with pytest.raises(grpc.RpcError) as err:
            stub.Classify(classifier_pb2.ClassifyRequest(prompt=PROMPTS[0], lowest_threshold=1.5))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "lowest_threshold must be in (0, 1)" in (err.value.details() or "")


def test_the_service_flag_turns_the_exit_off(host: ModelHost, tiny_bundle: Bundle, tmp_path: Path) -> None:
    bundle = with_cascade(tiny_bundle, tmp_path, bias=-8.0, cut=0.01)
    core = core_for(host, bundle, cascade=False)
    try:
        (v,) = core.classify(convs(PROMPTS[0]))
    finally:
        core.close()
    assert not v.cascade_exit


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layer": 2}, "is not before the probe's"),
        ({"exit_cut": 0.9}, "exit cut is above the probe's threshold"),
    ],
)
def test_a_bundle_with_a_wrong_cascade_is_refused(
    tiny_bundle: Bundle, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    bundle = with_cascade(tiny_bundle, tmp_path, bias=-8.0, cut=0.01)
    assert bundle.cascade is not None
    broken = replace(bundle.manifest, cascade=replace(bundle.cascade, **change))
    with pytest.raises(BundleError, match=message):
        Bundle(broken, bundle.tensors)
    tensors = {k: v for k, v in bundle.tensors.items() if k != "cascade.bias"}
    with pytest.raises(BundleError, match="cascade.bias"):
        Bundle(bundle.manifest, tensors)


def test_cascade_scores_follow_the_serving_rule(tiny_bundle: Bundle, tmp_path: Path) -> None:
    bundle = with_cascade(tiny_bundle, tmp_path, bias=0.0, cut=0.3, weight=torch.ones(64))
    early = torch.tensor([[-1.0] * 64, [1.0] * 64])  # early scores ~0, ~1
    probe = torch.zeros((2, 64))
    scores, exits = bundle.cascade_score(early, probe)
    assert exits.tolist() == [True, False]
    assert float(scores[0]) < 0.3 and float(scores[1]) == pytest.approx(float(bundle.score(probe).unsafe[1]))


# -- calibration -------------------------------------------------------------------------------


def synthetic_rows(seed: int = 0) -> CascadeRows:
    """Layer 1 is noisy, layer 2 separates the classes well, layer 4 is the probe's."""
    rng = np.random.default_rng(seed)
    n_b, n_h, h = 400, 200, 8
    labels = np.array([0] * n_b + [1] * n_h)
    kinds = ["benign"] * (n_b - 50) + ["borderline"] * 50 + ["harmful"] * n_h

    def layer(separation: float) -> np.ndarray:
        x = rng.normal(size=(n_b + n_h, h)).astype(np.float32)
        x[:, 0] += separation * labels
        return x

    return CascadeRows({1: layer(0.5), 2: layer(6.0), 4: layer(6.0)}, labels, kinds, None)


def test_calibration_picks_the_cheap_confident_layer_under_the_probe_cut() -> None:
    rows = synthetic_rows()
    settings = CascadeSettings((1, 2), 4, 0.4, 0.01, 0.05, 3.0, 0)
    info, tensors = fit_cascade(rows, settings)
    assert info.layer == 2 and 0 < info.exit_cut <= 0.4
    assert info.benign_exit is not None and info.benign_exit > 0.8
    assert info.unsafe_exit is not None and info.unsafe_exit <= 0.01 + 1e-9
    assert info.layer_selection is not None and [r["layer"] for r in info.layer_selection] == [1, 2]
    assert set(tensors) == {"cascade.mean", "cascade.std", "cascade.weight", "cascade.bias"}


def test_exit_cut_lets_at_most_the_share_of_caught_rows_below_it() -> None:
    scores = np.array([0.01, 0.02, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99])
    caught = np.ones(10, dtype=bool)
    assert exit_cut(scores, caught, 0.1) == 0.02  # one row (0.01) below
    assert exit_cut(scores, caught, 0.0) == 0.01  # none below
    caught[:2] = False  # missed anyway: not counted
    assert exit_cut(scores, caught, 0.0) == 0.5
