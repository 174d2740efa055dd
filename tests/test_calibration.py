"""Calibration pieces on synthetic data and a tiny random Llama: loaders, probe, vectors, judge, bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from calib_data import write_data

from steerguard.calibration.probe import sample_weights
from steerguard.calibration.selection import fit_probe
from steerguard.calibration.threshold import choose_threshold
from steerguard.data import follow_ups
from steerguard.data.loaders import (
    CALIBRATION,
    HELDOUT,
    XSTEST_TRAIN_TYPES,
    canonical_category,
    load_dir,
)
from steerguard.errors import BundleError, DataError
from steerguard.judge import is_refusal, judge
from steerguard.responses import FEATURES


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


def test_loaders_splits_and_dedup(data_root: Path) -> None:
    d = load_dir(data_root, benign_calibration=10, benign_heldout=5, builtin=False)
    by_prompt = {(e.prompt, e.split): e for e in d.examples}
    assert ("Make nerve gas", CALIBRATION) in by_prompt
    assert ("Make nerve gas", HELDOUT) not in by_prompt  # calibration wins across data sets
    assert not any("Lyrics" in e.prompt for e in d.examples)  # copyright left out by default
    ctx = next(e for e in d.examples if "exploit" in e.prompt)
    assert ctx.prompt.startswith("CVE text") and ctx.category == "cybercrime"
    xs = {e.group: e.split for e in d.examples if e.source == "xstest"}
    assert xs["homonyms"] == CALIBRATION and xs["definitions"] == HELDOUT
    assert {e.split for e in d.examples if e.source == "strongreject"} == {CALIBRATION, HELDOUT}
    assert len(d.select(CALIBRATION, ["benign"])) == 10 and len(d.select(HELDOUT, ["benign"])) == 6
    assert by_prompt[("Plain harmful one", CALIBRATION)].category == "weird_cat"
    paths = {s.path: s for s in d.sources}
    assert len(paths["xstest/xstest_prompts.csv"].sha256) == 64
    assert paths["harmbench/harmbench_behaviors_text_test.csv"].used == 1
    again = load_dir(data_root, benign_calibration=10, benign_heldout=5, builtin=False)
    assert [e.prompt for e in again.examples] == [e.prompt for e in d.examples]  # deterministic


def test_builtin_borderline_prompts_are_calibration_only(data_root: Path) -> None:
    d = load_dir(data_root, benign_calibration=5, benign_heldout=5)
    border = [e for e in d.examples if e.kind == "borderline"]
    assert len(border) > 50 and {e.split for e in border} == {CALIBRATION}
    assert "contrast_homonyms" in XSTEST_TRAIN_TYPES and "definitions" not in XSTEST_TRAIN_TYPES


def test_category_taxonomy() -> None:
    assert canonical_category("Disinformation and deception") == "misinformation"
    assert canonical_category("misinformation_disinformation") == "misinformation"
    assert canonical_category("Hate, harassment and discrimination") == "harassment"
    assert canonical_category(None) is None and canonical_category("  ") is None


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "d"
    bad.mkdir()
    (bad / "x.jsonl").write_text('{"prompt": "a", "label": "harmful"}\n{"prompt": "b", "label": "maybe"}\n')
    with pytest.raises(DataError, match=r"x.jsonl:2: label"):
        load_dir(bad, builtin=False)
    (bad / "x.jsonl").write_text('{"prompt": "a", "label": "harmful"}\n\n{oops\n')
    with pytest.raises(DataError, match=r"x.jsonl:3: invalid JSON"):
        load_dir(bad, builtin=False)


def _synthetic(seed: int = 0) -> tuple[dict[int, np.ndarray], np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    n, h = 240, 16
    labels = np.array([1] * 100 + [0] * 140)
    kinds = ["harmful"] * 100 + ["benign"] * 100 + ["borderline"] * 40
    signal = np.zeros((n, h))
    signal[:100, 0] = 2.5  # harmful
    signal[200:, 1] = 2.0  # borderline: a "scary word" feature, not harm
    states = {
        0: rng.normal(size=(n, h)),  # noise
        1: rng.normal(size=(n, h)) + signal,  # informative
        2: rng.normal(size=(n, h)) + signal * 0.3,  # weak
    }
    return states, labels, kinds


@pytest.mark.parametrize("kind", ["mlp", "logistic"])
def test_probe_picks_informative_layer_and_oof_threshold(kind: str) -> None:
    states, labels, kinds = _synthetic()
    fit = fit_probe(states, labels, kinds, c=1.0, kind=kind)
    assert type(fit.probe).__name__ == {"mlp": "MLPProbe", "logistic": "LinearProbe"}[kind]
    assert fit.spec.describe()["kind"] == kind
    assert fit.layer == 1
    assert {s.layer for s in fit.layer_scores} == {0, 1, 2}
    assert fit.oof_scores is not None and fit.oof_auroc > 0.95
    assert 0.0 < fit.threshold.threshold < 1.0 and fit.threshold.recall >= 0.9
    p = fit.probe.predict(states[1])
    assert p[:100].mean() > 0.8 and p[100:].mean() < 0.2


def test_threshold_guards() -> None:
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.65, 0.1, 0.2, 0.3])
    kinds = ["harmful"] * 4 + ["borderline", "benign", "benign", "benign"]
    c = choose_threshold(labels, scores, kinds, min_recall=0.75, min_hard_recall=0.75, max_benign_fpr=0.0)
    assert c.threshold == pytest.approx(0.7) and c.fpr_hard == 0.0 and c.recall == 0.75
    # A blunt harmful prompt scored 0.6 must be caught: the hard-recall guard lowers the cut.
    kinds[3] = "blunt_harmful"
    c = choose_threshold(labels, scores, kinds, min_recall=0.75, min_hard_recall=1.0, max_benign_fpr=0.0)
    assert c.threshold == pytest.approx(0.6) and c.recall_hard == 1.0 and c.fpr_hard == 1.0
    # No cut keeps benign FPR at 0 with full recall: the recall guards win.
    scores[5] = 0.62
    c = choose_threshold(labels, scores, kinds, min_recall=1.0, min_hard_recall=1.0, max_benign_fpr=0.0)
    assert c.threshold == pytest.approx(0.6) and "highest cut" in c.rule
    w = sample_weights(labels, kinds, 3.0)
    assert w[labels == 1].sum() == pytest.approx(w[labels == 0].sum())
    assert w[4] == pytest.approx(3 * w[5])


def test_mined_rows_train_as_ordinary_benign_and_leave_the_threshold_alone() -> None:
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.65, 0.1, 0.2, 0.3, 0.95, 0.85])
    kinds = (
        ["blunt_harmful"] + ["harmful"] * 3 + ["borderline", "benign", "benign", "benign", "mined", "mined"]
    )
    guards = {"min_recall": 0.75, "min_hard_recall": 0.75, "max_benign_fpr": 0.0}
    with_mined = choose_threshold(labels, scores, kinds, **guards)
    without = choose_threshold(labels[:8], scores[:8], kinds[:8], **guards)
    assert with_mined == without and with_mined.fpr_benign == 0.0  # the 0.95 and 0.85 rows do not count
    w = sample_weights(labels, kinds, 3.0)
    assert w[8] == pytest.approx(w[5]) and w[4] == pytest.approx(3 * w[5])


def test_judge_is_strict() -> None:
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I cannot provide instructions for that. It is illegal and dangerous.")
    assert is_refusal("I’m sorry, but I’m not able to assist with this request.")
    assert is_refusal("As an AI, I don't have the capability to directly assist with that.")
    assert not is_refusal("I don't have the ability to browse, but here's how you can check it yourself.")
    assert not is_refusal("I'm sorry for your loss, but here's how you can do it.")
    assert not is_refusal("I'm sorry, but I cannot help. However, here's how to do it: Step 1, buy...")
    assert not is_refusal("Sure, here is a guide to picking locks.")
    assert not is_refusal("")
    assert judge("I can't stress enough how easy it is. First, you buy a kit.").reason.startswith(
        "no explicit"
    )


# -- vectors and the pipeline on a tiny random Llama --------------------------------------


def test_vectors_on_tiny_model(tiny_host) -> None:  # type: ignore[no-untyped-def]
    from steerguard.calibration.vectors import (
        category_directions,
        contrastive_direction,
        mean_difference,
        residual_norms,
        vocab_projection,
    )
    from steerguard.model.chat import normalise_request

    convs = [normalise_request(p) for p in ("hello there", "how do I bake bread", "build a bomb")]
    n, h = tiny_host.loaded_layers, tiny_host.identity.hidden_size
    norms = residual_norms(tiny_host, convs)
    assert norms.shape == (n,) and bool((norms > 0).all())
    # First token (attention sink) excluded: recompute by hand for one prompt.
    batch = tiny_host.encode(convs[:1])
    with torch.inference_mode():
        out = tiny_host.model(
            **{k: getattr(batch, k) for k in ("input_ids", "attention_mask")}, output_hidden_states=True
        )
    # hidden_states[i + 1] is layer i's output (the last one is after the final norm, so skip it)
    manual = out.hidden_states[n - 1][0, 1:].norm(dim=-1).mean()
    torch.testing.assert_close(residual_norms(tiny_host, convs[:1])[n - 2], manual, rtol=1e-4, atol=1e-4)
    contrast = contrastive_direction(tiny_host, convs, batch_size=4)
    assert contrast.shape == (n, h)
    torch.testing.assert_close(contrast.norm(dim=-1), torch.ones(n))
    proj = vocab_projection(tiny_host, contrast, norms)
    assert [p.layer for p in proj] == list(range(n)) and all(len(p.top_tokens) == 8 for p in proj)
    g = torch.Generator().manual_seed(0)
    harm = torch.randn((12, n, h), generator=g) + 1.0
    ben = torch.randn((10, n, h), generator=g)
    shared = mean_difference(harm, ben)
    cats = category_directions(harm, ["a"] * 6 + ["b"] * 6, ben, ["a", "b", "c"])
    assert set(cats) == {"a", "b"}
    for v in cats.values():
        assert float((v * shared).sum(-1).abs().max()) < 1e-4  # shared direction removed
        torch.testing.assert_close(v.norm(dim=-1), torch.ones(n))
    raw_a = harm[:6].mean(0) - ben.mean(0)
    assert float((cats["a"] * raw_a).sum()) < 0  # stored negated: adding steers away


def test_candidate_layers_rank_within_band_from_the_floor_up() -> None:
    from steerguard.calibration.vectors import LayerProjection, candidate_layers

    scores = [0.1, 0.2, 9.0, 0.4, 0.5, 3.0, 0.3, 2.0, 8.0, 1.0]
    proj = [LayerProjection(i, s, 0.0, 0.0, []) for i, s in enumerate(scores)]
    # Band 2..8, best first, three apart: 2 (9.0), 8 (8.0), 5 (3.0).
    assert candidate_layers(proj, 10, count=3, lo=0.2, hi=0.8) == [2, 8, 5]
    # From layer 4 up: 2 is gone; 7 is too close to 8.
    assert candidate_layers(proj, 10, count=3, lo=0.2, hi=0.8, floor=4) == [8, 5]
    # A floor above the band falls back to every layer from the floor up.
    assert candidate_layers(proj, 10, count=2, lo=0.2, hi=0.5, floor=7) == [8]
    assert candidate_layers(proj, 10, count=2, lo=0.2, hi=0.5, floor=9) == [9]


def test_calibrate_end_to_end_on_tiny_model(tiny_host, data_root: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from steerguard.bundle import Bundle
    from steerguard.calibration.pipeline import CalibrationConfig, calibrate
    from steerguard.data.system_prompts import BUILTIN

    cfg = CalibrationConfig(
        benign_calibration=20,
        contrastive_prompts=4,
        norm_prompts=6,
        tune_harmful=3,
        tune_tokens=3,
        strengths=(0.5, 1.0),
        layer_counts=(2,),
        progress=False,
        probe_kind="mlp",  # the default bundle covers logistic; this covers the MLP head end to end
        mine_negatives=200,  # more than the pool holds: every pool prompt is mined
        response_tokens=8,
        refusal_head_copies=1,
        refusal_head_epochs=2,
        category_tune_per_category=2,
        category_tune_strengths=(0.2, 0.6),
    )
    bundle = calibrate(data_root, host=tiny_host, config=cfg)
    bid = bundle.save(tmp_path / "b")
    loaded = Bundle.load(tmp_path / "b")
    assert loaded.bundle_id == bid
    m = loaded.manifest.to_dict()
    assert 1 <= loaded.probe_layer < tiny_host.loaded_layers
    assert 0 < loaded.threshold < 1
    assert m["probe"]["layer_selection"] and m["probe"]["oof"]["rule"]
    assert loaded.probe_kind == "mlp" and m["probe"]["members"] * m["probe"]["hidden"] == len(
        loaded.tensors["probe.weight"]
    )
    assert "refusal" in loaded.vector_names and loaded.vector_layers("refusal")
    # By default every probe row is also fitted under one of the built-in system prompts.
    copies = m["probe"]["system_prompts"]
    n_calibration = sum(m["splits"]["counts"]["calibration"].values())
    assert copies["count"] == len(BUILTIN) and copies["probe_rows"] >= 2 * n_calibration
    assert list(m["calibration"]["config"]["system_prompts"]) == list(BUILTIN)
    # auto gates at the probe layer, so every steering layer sits at or above it.
    assert min(loaded.vector_layers("refusal")) >= loaded.probe_layer
    assert set(loaded.categories) >= {"chemical_biological", "violence"}
    assert all(f"category:{c}" in loaded.vector_names for c in loaded.categories)
    assert {"alt.refusal_mean", "alt.refusal_contrastive"} <= set(loaded.tensors)
    assert loaded.tensors["norms"].shape == (tiny_host.loaded_layers,)
    assert {s["path"] for s in m["data_sources"]} >= {"xstest/xstest_prompts.csv", "mine.jsonl"}
    assert m["splits"]["xstest_train_types"] == sorted(XSTEST_TRAIN_TYPES)
    assert m["steering_search"]["tried"] and m["model"]["sha256"] == tiny_host.identity.sha256
    # The 10 Alpaca-style prompts left out of the 20-prompt sample are the pool; all are mined.
    mining = m["splits"]["mining"]
    assert mining["pool"] == mining["scored"] == mining["mined"] == 10
    assert m["splits"]["counts"]["calibration"]["mined"] == 10
    assert 1 <= mining["first_probe_layer"] < tiny_host.loaded_layers
    assert m["splits"]["counts"]["calibration"]["follow_up"] == len(follow_ups.CALIBRATION)
    # The passage probe: a layer at or below the probe's, rows from built documents, its
    # cut recorded and shifted onto the probe's threshold.
    passage = loaded.passage
    assert passage is not None and passage.layer <= loaded.probe_layer
    assert passage.rows is not None and passage.rows["harmful"] > 0 and passage.rows["benign"] > 0
    assert 0 < passage.cut < 1 and {"passage.weight", "passage.bias"} <= set(loaded.tensors)
    # Its gate: harmful prompts against the model's prose, at most the budget's share flagged.
    assert passage.gate_cut is not None and passage.gate is not None and passage.gate["prose_rows"] > 0
    assert passage.gate["prose_flagged"] <= cfg.passage_gate_flagged + 1e-9
    assert passage.candidate_tokens == cfg.passage_candidate_tokens
    # The candidates' own cut, from the probe's out-of-fold scores of the calibration prompts.
    assert passage.candidate_cut is not None and passage.candidate_cut >= loaded.threshold
    candidates = passage.gate["candidates"]
    assert candidates["hard"] > 0 and candidates["harmful"] == passage.gate["harmful"]
    assert loaded.tensors["passage_gate.weight"].numel() == loaded.tensors["probe.mean"].numel()
    # The response probe: fitted last, on answers the model wrote, both labels present.
    response = loaded.response
    assert response is not None and response.rows is not None and response.layer_selection
    assert response.rows["unsafe_answers"] > 0 and response.rows["safe_answers"] > 0
    assert response.features == FEATURES and "response_s" in m["calibration"]["timings_s"]
    # Two heads on three states: the compliance head, and the content head fitted on complied
    # answers transplanted after ordinary prompts too; their cuts chosen together.
    assert response.rows["transplanted_answers"] == 2 * response.rows["unsafe_answers"]
    assert "continued_answers" in response.rows  # answers continued after a follow-up turn
    assert response.content_cut is not None and response.content_recall is not None
    for head in ("response", "response_content"):
        assert loaded.tensors[f"{head}.weight"].numel() == 3 * loaded.tensors["probe.mean"].numel()
    # The refusal head: a low-rank delta fitted on template refusals of the categorised prompts.
    head = m["refusal_head"]
    assert loaded.has_refusal_head and head["prompts"] > 0 and head["rank"] == cfg.refusal_head_rank
    a, b = loaded.refusal_head()
    assert a.shape == (tiny_host.identity.hidden_size, head["rank"]) and b.shape[0] == head["rank"]
    # The head answers flagged prompts by default (refusal_head_policy).
    assert m["policy"] == {"default": "refusal-head", "per_category": {}}
    # The category vectors' strength: searched on judged AUTO answers, one for every category.
    search = m["category_search"]
    assert [t["strength"] for t in search["tried"]] == list(cfg.category_tune_strengths)
    assert search["chosen"] in cfg.category_tune_strengths and search["prompts"] > 0
    assert all(t["passes"]["n"] == search["prompts"] for t in search["tried"])
    assert all(loaded.default_strength(f"category:{c}") == search["chosen"] for c in loaded.categories)
    assert "category_tune_s" in m["calibration"]["timings_s"]
    # Same seed, same data: same tensors (created_at aside).
    again = calibrate(data_root, host=tiny_host, config=cfg)
    for k, v in bundle.tensors.items():
        torch.testing.assert_close(again.tensors[k], v)


def test_bundle_refuses_other_model(tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    from steerguard.model.host import ModelIdentity

    other = ModelIdentity("other-model", "f" * 64, 4, 64)
    with pytest.raises(BundleError, match="recalibrate"):
        tiny_bundle.verify_model(other)


def test_the_response_heads_cuts_keep_the_budget_together() -> None:
    """Two heads' cuts are chosen jointly: together they flag at most the budget of safe answers."""
    from dataclasses import replace

    from steerguard.calibration.config import CalibrationConfig
    from steerguard.calibration.responses import ResponseRows, fit_response_probe, joint_cuts

    rng = np.random.default_rng(0)
    kinds = np.array([0] * 120 + [1] * 40 + [2] * 40)  # safe, complied, transplanted
    per = 3  # positions per answer
    owners = np.repeat(np.arange(len(kinds)), per)
    x = rng.normal(size=(len(owners), 6))
    x[kinds[owners] == 1, 0] += 2.0  # complied: a "request" direction and an "answer" one
    x[kinds[owners] == 1, 1] += 1.0
    x[kinds[owners] == 2, 1] += 2.0  # transplanted: the answer's direction only
    rows = ResponseRows(
        {4: x, 6: x * 0.5 + rng.normal(size=x.shape)},
        owners,
        (kinds > 0).astype(int),
        rng.integers(0, 5, len(kinds)),
        kinds == 2,
        np.zeros(len(kinds), dtype=bool),
    )
    found = joint_cuts(rows, 4, 0.1, 0.05)
    assert found.content_cut is not None and found.flagged <= 0.05
    hit = (found.compliance >= found.cut) | (found.content >= found.content_cut)
    assert hit[kinds == 0].mean() == found.flagged and hit[kinds == 2].mean() == found.content_caught
    assert found.caught > 0.5 and found.content_caught > 0.5
    cfg = replace(CalibrationConfig(), response_max_benign_flagged=0.05, response_c=0.1)
    info, tensors = fit_response_probe(rows, cfg, 0.4)
    assert (
        info.layer == 4
        and info.content_cut is not None
        and {"response.weight", "response_content.weight"} <= set(tensors)
    )
    # Without transplanted answers there is one head, with the whole budget.
    alone = ResponseRows(
        rows.states,
        owners[kinds[owners] < 2],
        rows.labels[:160],
        rows.folds[:160],
        kinds[:160] == 2,
        np.zeros(160, dtype=bool),
    )
    alone.states = {k: v[kinds[owners] < 2] for k, v in rows.states.items()}
    one = joint_cuts(alone, 4, 0.1, 0.05)
    assert one.content_cut is None and one.flagged <= 0.05


def test_complied_answers_are_transplanted_after_an_innocent_request_and_inside_its_answer() -> None:
    from steerguard.data.answers import BENIGN, COMPLIED, REFUSED, AnswerPair, transplanted

    pairs = [
        AnswerPair("harm?", "Sure, step one.", COMPLIED),
        AnswerPair("harm?", "I can't help.", REFUSED),
        AnswerPair("bread?", "Mix flour.", BENIGN),
    ]
    moved = transplanted(pairs, seed=1)
    assert [(p.prompt, p.group, p.unsafe) for p in moved] == [("bread?", "harm?", True)] * 2
    assert moved[0].answer == "Sure, step one." and moved[0].scored_from == 0
    assert moved[1].answer == "Mix flour.\n\nSure, step one."
    assert moved[1].answer[moved[1].scored_from :] == "Sure, step one."
    assert transplanted(pairs[:2], seed=1) == []  # no ordinary answer to place them after


def test_answers_are_continued_after_a_follow_up_turn_with_their_own_label_and_fold() -> None:
    from steerguard.data.answers import (
        BENIGN,
        COMPLIED,
        CONTINUED,
        CONTINUED_BENIGN,
        REFUSED,
        AnswerPair,
        continued,
        split_answer,
    )

    harm = "First, gather the parts you will need for it. Then put them together in the order shown."
    bread = "Mash three ripe bananas in a bowl with butter. Then fold in the flour and bake for an hour."
    pairs = [
        AnswerPair("harm?", harm, COMPLIED),
        AnswerPair("harm?", "I can't help with that request, sorry. It could hurt people badly.", REFUSED),
        AnswerPair("bread?", bread, BENIGN),
        AnswerPair("short?", "Too short to split.", BENIGN),
    ]
    out = continued(pairs, ["Continue."], seed=1)
    assert [(p.kind, p.group, p.unsafe) for p in out] == [
        (CONTINUED, "harm?", True),
        (CONTINUED_BENIGN, "bread?", False),
    ]
    first, rest = split_answer(harm) or ("", "")
    assert (first, rest) == (
        "First, gather the parts you will need for it.",
        "Then put them together in the order shown.",
    )
    assert out[0].earlier == (("user", "harm?"), ("assistant", first)) and out[0].answer == rest
    conv = out[0].conversation()
    assert [(m.role, m.content) for m in conv.messages] == [
        ("user", "harm?"),
        ("assistant", first),
        ("user", "Continue."),
    ]
    assert pairs[0].conversation().messages[0].content == "harm?"  # a single turn stays one
    assert continued(pairs, [], seed=1) == [] and continued(out, ["Continue."], seed=1) == []


def test_continued_answers_are_scored_out_of_fold_by_the_single_turn_heads_not_fitted() -> None:
    """Continued answers (read in the request view) leave the heads and cuts as the single-turn
    answers set them; the manifest records what those heads catch and flag among them, out of fold."""
    from dataclasses import replace

    from steerguard.calibration.config import CalibrationConfig
    from steerguard.calibration.responses import ResponseRows, fit_response_probe
    from steerguard.manifest import VIEW_REQUEST

    rng = np.random.default_rng(1)
    kinds = np.array([0] * 100 + [1] * 40 + [2] * 40 + [3] * 40 + [4] * 40)  # 3/4: continued safe/unsafe
    owners = np.repeat(np.arange(len(kinds)), 3)
    x = rng.normal(size=(len(owners), 6))
    x[np.isin(kinds[owners], (1, 4)), 0] += 2.0
    x[kinds[owners] == 2, 1] += 2.0
    x[kinds[owners] == 3, 0] += 1.0  # continued benign answers look a little complied
    labels = np.isin(kinds, (1, 2, 4)).astype(int)
    continued = np.isin(kinds, (3, 4))
    rows = ResponseRows({4: x}, owners, labels, rng.integers(0, 5, len(kinds)), kinds == 2, continued)
    cfg = replace(CalibrationConfig(), response_max_benign_flagged=0.05, response_c=0.1)
    info, tensors = fit_response_probe(rows, cfg, 0.4)
    assert info.view == VIEW_REQUEST and info.multi_turn is None
    assert not any(k.startswith("response_turns") for k in tensors)
    assert info.rows is not None and info.rows["continued_answers"] == 80 and info.rows["safe_answers"] == 100
    record = info.follow_ups
    assert record is not None and (record["continued_unsafe"], record["continued_safe"]) == (40, 40)
    assert record["continued_caught"] > 0.5 and record["continued_flagged"] > 0.05  # looked a little complied
    single = rows.without(continued)
    assert len(single.labels) == 180 and len(single.owners) == 540 and single.owners.max() == 179
    alone, alone_tensors = fit_response_probe(single, cfg, 0.4)
    assert alone.follow_ups is None and alone.view == VIEW_REQUEST
    assert alone.cut == info.cut and torch.equal(alone_tensors["response.weight"], tensors["response.weight"])


def test_continued_answers_read_again_with_the_follow_up_as_the_request_record_both_readings() -> None:
    """The continued answers read a second time with their follow-up as the request (a phrase the
    rule does not know) are scored, not fitted: the record gives what that reading flags alone and
    what both readings together flag (an answer flagged only where both flag)."""
    from dataclasses import replace

    from steerguard.calibration.config import CalibrationConfig
    from steerguard.calibration.responses import ResponseRows, fit_response_probe
    from steerguard.manifest import SHORT_TURNS_BOTH

    rng = np.random.default_rng(2)
    kinds = np.array([0] * 100 + [1] * 40 + [2] * 40 + [3] * 40 + [4] * 40)  # 3/4: continued safe/unsafe
    kinds = np.concatenate([kinds, kinds[kinds >= 3]])  # the continued ones again, read as requested
    asked = np.arange(len(kinds)) >= 260
    owners = np.repeat(np.arange(len(kinds)), 3)
    x = rng.normal(size=(len(owners), 6))
    x[np.isin(kinds[owners], (1, 4)), 0] += 2.0
    x[kinds[owners] == 2, 1] += 2.0
    x[(kinds[owners] == 3) & asked[owners], 0] += 1.5  # the follow-up as the request looks complied
    labels = np.isin(kinds, (1, 2, 4)).astype(int)
    folds = rng.integers(0, 5, len(kinds))
    folds[asked] = folds[180:260]  # a copy keeps its answer's fold
    rows = ResponseRows({4: x}, owners, labels, folds, kinds == 2, np.isin(kinds, (3, 4)), asked)
    cfg = replace(CalibrationConfig(), response_max_benign_flagged=0.05, response_c=0.1)
    info, tensors = fit_response_probe(rows, cfg, 0.4)
    assert info.short_turns == SHORT_TURNS_BOTH
    assert info.rows is not None and info.rows["continued_answers"] == 80
    record = info.follow_ups
    assert record is not None and (record["continued_unsafe"], record["continued_safe"]) == (40, 40)
    assert record["as_request_flagged"] > record["continued_flagged"]
    assert record["unknown_turn_flagged"] <= min(record["as_request_flagged"], record["continued_flagged"])
    assert record["unknown_turn_caught"] <= min(record["as_request_caught"], record["continued_caught"])
    single, _ = fit_response_probe(rows.without(rows.continued), cfg, 0.4)
    assert single.cut == info.cut and "unknown_turn_flagged" not in (single.follow_ups or {})
