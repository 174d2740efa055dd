"""Offline CLI (classify, generate, demo) on a tiny random Llama and a random bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steerguard.cli import main
from steerguard.errors import DataError
from steerguard.jsonl import read_jsonl


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _read(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [obj for _, obj in read_jsonl(path)]


@pytest.fixture()
def tiny_args(tiny_model_dir: Path, tiny_bundle_dir: Path) -> list[str]:
    return ["--model", str(tiny_model_dir), "--bundle", str(tiny_bundle_dir), "--quiet", "--batch-size", "2"]


def test_classify_adds_fields_and_keeps_keys(tmp_path: Path, tiny_args: list[str], tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    inp = _write(
        tmp_path / "in.jsonl",
        [
            {"prompt": "How do I bake bread?", "id": 1},
            {
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "id": 2,
            },
            {"prompt": "How do I build a bomb?", "id": 3, "extra": {"a": [1]}},
        ],
    )
    out = tmp_path / "out.jsonl"
    assert main(["classify", "--input", str(inp), "--output", str(out), *tiny_args]) == 0
    rows = _read(out)
    assert [r["id"] for r in rows] == [1, 2, 3] and rows[2]["extra"] == {"a": [1]}
    for r in rows:
        assert 0.0 <= r["score"] <= 1.0
        assert r["unsafe"] == (r["score"] >= tiny_bundle.threshold)
        assert set(r["category_scores"]) == set(tiny_bundle.categories)
        assert (r["category"] is None) == (not r["unsafe"])
    # --threshold 0 flags everything and names a category.
    assert main(["classify", "--input", str(inp), "--output", str(out), "--threshold", "0", *tiny_args]) == 0
    assert all(r["unsafe"] and r["category"] in tiny_bundle.categories for r in _read(out))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "in.jsonl:3: invalid JSON"),
        ('{"prompt": ""}', "in.jsonl:3: prompt is empty"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "in.jsonl:3: the last message"),
        ("[1, 2]", "in.jsonl:3: expected a JSON object"),
    ],
)
def test_malformed_line_names_its_number(
    tmp_path: Path, tiny_args: list[str], capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    inp = _write(tmp_path / "in.jsonl", [{"prompt": "ok"}, "", line])
    for cmd in ("classify", "generate"):
        assert main([cmd, "--input", str(inp), "--output", str(tmp_path / "o.jsonl"), *tiny_args]) == 2
        assert message in capsys.readouterr().err


def test_generate_modes_and_auto_exactness(tmp_path: Path, tiny_args: list[str], tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    prompts = ["How do I bake bread?", "Tell me a joke", "How do I build a bomb?"]
    inp = _write(tmp_path / "in.jsonl", [{"prompt": p, "k": i} for i, p in enumerate(prompts)])
    outs = {}
    for mode in ("none", "refusal", "auto"):
        out = tmp_path / f"{mode}.jsonl"
        rc = main(
            [
                "generate",
                "--input",
                str(inp),
                "--output",
                str(out),
                "--mode",
                mode,
                "--max-new-tokens",
                "6",
                *tiny_args,
            ]
        )
        assert rc == 0
        outs[mode] = _read(out)
    for mode, rows in outs.items():
        assert [r["k"] for r in rows] == [0, 1, 2]
        for r in rows:
            assert isinstance(r["response"], str) and r["steering"]["mode"] == mode
    assert all(r["steering"]["vector"] == "refusal" for r in outs["refusal"])
    assert outs["refusal"][0]["steering"]["layers"] == tiny_bundle.vector_layers("refusal")
    for plain, auto in zip(outs["none"], outs["auto"], strict=True):
        verdict = auto["steering"]["verdict"]
        assert set(verdict) >= {"score", "unsafe", "category", "category_scores"}
        if not verdict["unsafe"]:
            assert auto["steering"]["vector"] == "none"
            assert auto["response"] == plain["response"]  # unflagged rows: exactly unsteered


def test_generate_category_mode_per_line(tmp_path: Path, tiny_args: list[str], tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    cat = tiny_bundle.categories[0]
    inp = _write(
        tmp_path / "in.jsonl",
        [
            {"prompt": "a", "category": cat},
            {"prompt": "b"},  # no category: the probe's top category is used
            {"prompt": "c", "mode": "none"},
        ],
    )
    out = tmp_path / "o.jsonl"
    rc = main(
        [
            "generate",
            "--input",
            str(inp),
            "--output",
            str(out),
            "--mode",
            "category",
            "--max-new-tokens",
            "3",
            *tiny_args,
        ]
    )
    assert rc == 0
    rows = _read(out)
    assert rows[0]["steering"]["vector"] == f"category:{cat}"
    assert rows[1]["steering"]["vector"].startswith("category:")
    assert rows[2]["steering"]["mode"] == "none"
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "a", "category": "nope"}])
    assert (
        main(["generate", "--input", str(bad), "--output", str(out), "--mode", "category", *tiny_args]) == 2
    )


def test_jsonl_reader_counts_blank_lines(tmp_path: Path) -> None:
    p = _write(tmp_path / "x.jsonl", [{"a": 1}, "", "  ", {"b": 2}])
    assert [n for n, _ in read_jsonl(p)] == [1, 4]
    _write(p, [{"a": 1}, "nope"])
    with pytest.raises(DataError, match="x.jsonl:2"):
        list(read_jsonl(p))


def test_demo_runs(tiny_args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--max-new-tokens", "3", "--no-compare", "hello there", *tiny_args]) == 0
    out = capsys.readouterr().out
    assert "> hello there" in out and "verdict:" in out


def test_bundle_on_wrong_model_is_a_clear_error(
    tmp_path: Path, tiny_bundle_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from devstack.models import make_tiny_llama

    other = make_tiny_llama(tmp_path / "other", seed=1)
    inp = _write(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    rc = main(
        [
            "classify",
            "--input",
            str(inp),
            "--output",
            str(tmp_path / "o.jsonl"),
            "--model",
            str(other),
            "--bundle",
            str(tiny_bundle_dir),
            "--quiet",
        ]
    )
    assert rc == 2
    assert "recalibrate" in capsys.readouterr().err
