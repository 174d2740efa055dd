"""The probe's unsafe-probability heads: logistic and the MLP ensemble, and how a bundle serves them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from devstack.models import make_random_bundle
from steerguard.bundle import Bundle
from steerguard.calibration.probe import MLPProbe, ProbeSpec, fit_mlp
from steerguard.calibration.selection import family_holdout
from steerguard.calibration.threshold import auroc
from steerguard.errors import BundleError


def _interaction(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A label set by how two features combine, not by either alone.

    The label is 1 exactly when two features agree (XNOR): no linear probe
    can express that, a hidden layer can. The real case is milder but has
    the same shape: "kill" is harmful aimed at a person and harmless aimed at
    a process, so a word's meaning depends on its context.
    """
    rng = np.random.default_rng(seed)
    word, target = rng.integers(0, 2, n), rng.integers(0, 2, n)
    x = rng.normal(size=(n, 12)).astype(np.float32) * 0.5
    x[:, 0] += 2.0 * word
    x[:, 1] += 2.0 * target
    return x, (word == target).astype(np.int64)


def test_mlp_learns_what_a_linear_probe_cannot() -> None:
    x, y = _interaction(600, 0)
    x_test, y_test = _interaction(400, 1)
    linear = ProbeSpec(kind="logistic", c=1.0).fit(x, y)
    mlp = ProbeSpec(kind="mlp", members=2, epochs=200).fit(x, y)
    a_linear, a_mlp = auroc(y_test, linear.predict(x_test)), auroc(y_test, mlp.predict(x_test))
    assert a_linear < 0.7  # near chance: no single direction separates the classes
    assert a_mlp > 0.97


def test_mlp_members_merge_into_one_network_reproducibly() -> None:
    x, y = _interaction(200, 2)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = fit_mlp(x, y, hidden=8, members=3, epochs=30, seed=4)
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG is left as it was
    b = fit_mlp(x, y, hidden=8, members=3, epochs=30, seed=4)
    assert a.hidden_weight.shape == (24, 12) and a.weight.shape == (24,) and a.bias.shape == (1,)
    np.testing.assert_array_equal(a.hidden_weight, b.hidden_weight)
    np.testing.assert_array_equal(a.weight, b.weight)
    c = fit_mlp(x, y, hidden=8, members=3, epochs=30, seed=5)
    assert not np.array_equal(a.hidden_weight, c.hidden_weight)


def test_family_holdout_scores_each_family_with_a_probe_that_never_saw_it() -> None:
    rng = np.random.default_rng(7)
    n = 300
    labels = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 0] += 2.0 * labels
    groups: list[str | None] = [None] * 150 + ["a"] * 50 + ["b"] * 50 + ["c"] * 50
    x[150:200, 1] += 3.0  # family "a" carries a feature no other row has
    kinds = ["harmful" if y else "benign" for y in labels]
    spec = ProbeSpec(kind="logistic", c=1.0)
    out = family_holdout(x, labels, kinds, groups, 0.5, spec=spec, hard_weight=1.0)
    assert out["families"] == ["a", "b", "c"]
    assert out["auroc"] > 0.85 and 0.7 < out["unsafe_caught"] <= 1.0 and out["safe_flagged"] < 0.3
    assert family_holdout(x, labels, kinds, [None] * n, 0.5, spec=spec, hard_weight=1.0) == {}


def _mlp_bundle(tmp_path: Path, host: Any, probe: MLPProbe) -> Bundle:
    base = make_random_bundle(host, tmp_path / "base", probe_layer=1)
    tensors = {k: v for k, v in base.tensors.items() if not k.startswith("probe.")}
    tensors.update({"probe.mean": torch.from_numpy(probe.mean), "probe.std": torch.from_numpy(probe.std)})
    tensors.update(probe.tensors("probe"))
    manifest = replace(base.manifest, probe=replace(base.manifest.probe, kind="mlp"))
    return Bundle(manifest, tensors)


def test_bundle_serves_the_mlp_probe_exactly(tiny_host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    h = tiny_host.identity.hidden_size
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, h)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    probe = fit_mlp(x, y, hidden=6, members=2, epochs=40)
    bundle = _mlp_bundle(tmp_path, tiny_host, probe)
    bundle.save(tmp_path / "mlp")
    loaded = Bundle.load(tmp_path / "mlp")
    assert loaded.probe_kind == "mlp"
    served = loaded.score(torch.from_numpy(x[:10])).unsafe.numpy()
    np.testing.assert_allclose(served, probe.predict(x[:10]), rtol=1e-5, atol=1e-6)


def test_bundle_rejects_broken_probe_heads(tiny_host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = make_random_bundle(tiny_host, tmp_path / "b")
    mlp_without_hidden = replace(base.manifest, probe=replace(base.manifest.probe, kind="mlp"))
    with pytest.raises(BundleError, match=r"probe\.hidden\.weight"):
        Bundle(mlp_without_hidden, base.tensors)
    unknown = replace(base.manifest, probe=replace(base.manifest.probe, kind="forest"))
    with pytest.raises(BundleError, match="unsupported probe kind 'forest'"):
        Bundle(unknown, base.tensors)
    with pytest.raises(ValueError, match="unknown probe kind"):
        ProbeSpec(kind="forest").fit(np.zeros((4, 2)), np.array([0, 1, 0, 1]))


def test_bundle_rejects_a_passage_head_that_reads_only_the_end_state(tiny_host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = make_random_bundle(tiny_host, tmp_path / "b", passage_tokens=64)
    h = tiny_host.identity.hidden_size
    old = {**base.tensors, "passage.weight": base.tensors["passage.weight"][:h]}
    with pytest.raises(BundleError, match="segment's mean"):
        Bundle(base.manifest, old)
