"""Calibrating and measuring the probe under system prompts other than the template's default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from calib_data import small_config, write_data

from steerguard.calibration.selection import fold_splits
from steerguard.cli import main
from steerguard.data import system_prompts
from steerguard.errors import DataError


def test_resolve_builtin_and_a_file(tmp_path: Path) -> None:
    assert system_prompts.resolve("builtin") == system_prompts.BUILTIN
    assert system_prompts.resolve(None) == () and system_prompts.resolve("") == ()
    assert system_prompts.resolve("none") == ()
    f = tmp_path / "sys.txt"
    f.write_text("You are Acme's bot.\n\n  You are Acme's bot.  \nBe brief.\n", encoding="utf-8")
    assert system_prompts.resolve(str(f)) == ("You are Acme's bot.", "Be brief.")
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no system prompt"):
        system_prompts.resolve(str(tmp_path / "empty.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="UTF-8"):
        system_prompts.resolve(str(tmp_path / "bin.txt"))
    with pytest.raises(DataError, match="neither 'builtin', 'none' nor a file"):
        system_prompts.resolve(str(tmp_path / "missing.txt"))


def test_evaluation_prompts_are_never_calibration_ones() -> None:
    assert not set(system_prompts.EVALUATION) & set(system_prompts.BUILTIN)


def test_pick_is_deterministic_and_spreads() -> None:
    keys = [f"prompt number {i}" for i in range(600)]
    picked = [system_prompts.pick(k, system_prompts.BUILTIN) for k in keys]
    assert picked == [system_prompts.pick(k, system_prompts.BUILTIN) for k in keys]
    counts = {p: picked.count(p) for p in system_prompts.BUILTIN}
    assert min(counts.values()) >= 20  # 50 expected each
    conv = system_prompts.with_system("How do I bake bread?", "Be brief.")
    assert [m.role for m in conv.messages] == [
        "system",
        "user",
    ] and conv.last_user_text == "How do I bake bread?"


def test_folds_keep_a_prompts_copies_together() -> None:
    n = 60
    labels = np.array([1, 0] * (n // 2) * 2)
    kinds = ["harmful" if y else "benign" for y in labels]
    clusters = [f"p{i}" for i in range(n)] * 2  # row i and row i + n are one prompt
    for train, test in fold_splits(labels, kinds, folds=5, clusters=clusters):
        test_clusters = {clusters[i] for i in test}
        assert not test_clusters & {clusters[i] for i in train}
    # Without clusters the copies land in different folds (what the clusters are for).
    split = [
        {clusters[i] for i in train} & {clusters[i] for i in test}
        for train, test in fold_splits(labels, kinds, folds=5)
    ]
    assert any(split)


def test_calibrate_with_system_prompts_doubles_the_probe_rows(tiny_host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from steerguard.calibration.pipeline import calibrate

    data = write_data(tmp_path / "data")
    plain = calibrate(data, host=tiny_host, config=small_config(mine_negatives=0))
    sys_cfg = small_config(mine_negatives=0, system_prompts=("Be brief.", "You are a pirate."))
    copied = calibrate(data, host=tiny_host, config=sys_cfg)
    assert "system_prompts" not in plain.manifest.to_dict()["probe"]
    assert "system_prompts" not in plain.manifest.to_dict()["calibration"]["config"]
    entry = copied.manifest.to_dict()["probe"]["system_prompts"]
    n_calibration = sum(plain.manifest.to_dict()["splits"]["counts"]["calibration"].values())
    assert entry["count"] == 2 and entry["probe_rows"] == 2 * n_calibration
    assert list(copied.manifest.to_dict()["calibration"]["config"]["system_prompts"]) == [
        "Be brief.",
        "You are a pirate.",
    ]
    # The copies change the probe, not the vectors (those use the template's own rows).
    assert not np.allclose(plain.tensors["probe.weight"].numpy(), copied.tensors["probe.weight"].numpy())
    np.testing.assert_allclose(
        plain.tensors["alt.refusal_mean"].numpy(), copied.tensors["alt.refusal_mean"].numpy(), atol=1e-6
    )


def test_calibrate_cli_rejects_a_missing_system_prompt_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_data(tmp_path / "data")
    rc = main(
        [
            "calibrate",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "b"),
            "--system-prompts",
            str(tmp_path / "nope.txt"),
            "--quiet",
        ]
    )
    assert rc == 2
    assert "neither 'builtin', 'none' nor a file" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
