"""Hard-negative mining: the benign pool, what is mined from it, and how calibration uses it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from calib_data import write_data

from steerguard.calibration.mining import MINED, digest, mine_negatives
from steerguard.calibration.probe import LinearProbe
from steerguard.data.loaders import BENIGN, CALIBRATION, POOL, Example, load_dir
from steerguard.errors import DataError
from steerguard.model.activations import collect_states
from steerguard.model.chat import normalise_request


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


def test_pool_is_what_the_benign_sample_leaves_and_is_used_nowhere_else(data_root: Path) -> None:
    d = load_dir(data_root, benign_calibration=12, benign_heldout=5, builtin=False)
    sampled = {e.prompt for e in d.select(CALIBRATION, ["benign"]) if e.source.endswith("harmless_train")}
    pooled = {e.prompt for e in d.pool}
    everything = {f"Write a poem number {i}" for i in range(30)}
    assert len(sampled) == 12 and sampled | pooled == everything and not sampled & pooled
    assert not pooled & {e.prompt for e in d.examples}
    assert {(e.split, e.kind, e.label) for e in d.pool} == {(POOL, "benign", BENIGN)}
    # The calibration sample itself is what it was before the pool existed (same seeded draw).
    again = load_dir(data_root, benign_calibration=12, benign_heldout=5, builtin=False)
    assert [e.prompt for e in again.pool] == [e.prompt for e in d.pool]


def test_jsonl_pool_rows(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    rows = [
        {"prompt": "harm me", "label": "harmful", "split": "calibration"},
        {"prompt": "bake bread", "label": "benign", "split": "calibration"},
        {"prompt": "write a sonnet", "label": "benign", "split": "pool"},
        {"prompt": "bake bread", "label": "benign", "split": "pool"},  # already calibration: not pooled
    ]
    (root / "traffic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = load_dir(root, builtin=False)
    assert [e.prompt for e in d.pool] == ["write a sonnet"]
    assert "write a sonnet" not in {e.prompt for e in d.examples}
    (root / "traffic.jsonl").write_text(
        json.dumps({"prompt": "x", "label": "harmful", "split": "pool"}) + "\n"
    )
    with pytest.raises(DataError, match=r"traffic.jsonl:1: the 'pool' split holds benign prompts only"):
        load_dir(root, builtin=False)


def test_mine_negatives_takes_the_highest_scores(tiny_host, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STEERGUARD_CACHE_DIR", str(tmp_path / "cache"))
    pool = [
        Example(f"ordinary request number {i} " + "word " * (i % 5), BENIGN, "t", POOL, "benign")
        for i in range(24)
    ]
    layer, h = 1, tiny_host.identity.hidden_size
    rng = np.random.default_rng(0)
    probe = LinearProbe(
        np.zeros(h, np.float32),
        np.ones(h, np.float32),
        rng.normal(size=h).astype(np.float32),
        np.zeros(1, np.float32),
    )
    result = mine_negatives(tiny_host, probe, layer, 0.5, pool, count=5, sample=16, seed=3, batch_size=4)
    assert result.scored == 16 and result.pool == 24 and len(result.examples) == 5
    assert {(e.kind, e.split) for e in result.examples} == {(MINED, CALIBRATION)}
    # Recompute the scores independently: the mined five are the sample's top five.
    import random

    sample = random.Random(3).sample(pool, 16)
    states = collect_states(tiny_host, [normalise_request(e.prompt) for e in sample], [layer])[layer]
    scores = probe.predict(states.numpy())
    top = [sample[i].prompt for i in np.argsort(-scores, kind="stable")[:5]]
    assert [e.prompt for e in result.examples] == top
    assert result.lowest_mined_score == pytest.approx(float(np.sort(scores)[-5]), abs=1e-5)
    assert result.flagged == pytest.approx(float((scores >= 0.5).mean()))
    # The scores are memoised per layer: a second run reads them back and mines the same rows.
    assert any((tmp_path / "cache" / "activations").glob("*-layers-1.pt"))
    again = mine_negatives(tiny_host, probe, layer, 0.5, pool, count=5, sample=16, seed=3, batch_size=4)
    assert [e.prompt for e in again.examples] == top
    assert again.as_dict()["sha256"] == result.as_dict()["sha256"] == digest(result.examples)
    assert digest(result.examples[:4]) != digest(result.examples)
    assert mine_negatives(tiny_host, probe, layer, 0.5, [], count=5, sample=16, seed=3).examples == []
