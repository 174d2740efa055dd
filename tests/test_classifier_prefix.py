"""The shared-prefix forward pass gives the plain forward pass's probe states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from classifier_service.core import ClassifierCore, CoreConfig
from classifier_service.prefix import SharedPrefix, template_prefix
from steerguard.bundle import Bundle
from steerguard.model.activations import last_token_states
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost

PROMPTS = [
    "How do I bake bread?",
    "Tell me a joke about cats, please, a long one with a twist at the end",
    "?",
    "  leading spaces and\nnew lines\n",
]


@pytest.fixture(scope="module")
def host(tiny_model_dir: Path, tiny_bundle: Bundle) -> ModelHost:
    return ModelHost.load(tiny_model_dir, max_layers=tiny_bundle.probe_layer + 1)


def plain(host: ModelHost, rows: list[list[int]], layer: int) -> torch.Tensor:
    return last_token_states(host, host.pad(rows), [layer])[layer]


def test_prefix_is_the_template_head(host: ModelHost) -> None:
    ids = template_prefix(host)
    text = host.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system") and "Hugging Face<|im_end|>" in text
    for p in PROMPTS:
        assert host.token_ids(normalise_request(p))[: len(ids)] == ids


def test_states_match_the_plain_forward(host: ModelHost, tiny_bundle: Bundle) -> None:
    layer = tiny_bundle.probe_layer
    prefix = SharedPrefix.for_host(host)
    assert prefix is not None and len(prefix) > 4
    rows = [host.token_ids(normalise_request(p)) for p in PROMPTS]
    assert all(prefix.fits(r) for r in rows)
    torch.testing.assert_close(
        prefix.last_token_states(rows, layer), plain(host, rows, layer), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        prefix.last_token_states(rows[1:2], layer), plain(host, rows[1:2], layer), atol=1e-4, rtol=1e-4
    )


def test_rows_without_the_prefix_take_the_plain_path(host: ModelHost, tiny_bundle: Bundle) -> None:
    layer = tiny_bundle.probe_layer
    own_system = normalise_request(
        None, [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}]
    )
    convs = [normalise_request(PROMPTS[0]), own_system, normalise_request(PROMPTS[1])]
    rows = [host.token_ids(c) for c in convs]
    core = ClassifierCore(host, tiny_bundle, None)
    try:
        assert core.prefix is not None and [core.prefix.fits(r) for r in rows] == [True, False, True]
        torch.testing.assert_close(core._probe_states(rows), plain(host, rows, layer), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            core._probe_states(rows[1:2]), plain(host, rows[1:2], layer), atol=1e-4, rtol=1e-4
        )
    finally:
        core.close()
    off = ClassifierCore(host, tiny_bundle, None, CoreConfig(share_prefix=False))
    assert off.prefix is None
    off.close()


def test_mixed_lengths_are_packed_and_match_the_plain_forward(host: ModelHost, tiny_bundle: Bundle) -> None:
    """One long prompt among short ones: suffixes share rows, states stay those of a plain pass."""
    from classifier_service.packing import plan_lines

    layer = tiny_bundle.probe_layer
    prefix = SharedPrefix.for_host(host)
    assert prefix is not None
    texts = ["word " * 60, *PROMPTS, "short", "a bit longer than short", "x y z"]
    rows = [host.token_ids(normalise_request(p)) for p in texts]
    lengths = [len(r) - len(prefix) for r in rows]
    plan = plan_lines(lengths, len(prefix), prefix._pair_weight)
    assert len(plan.lines) < len(rows)  # some rows share a line
    assert plan.tokens < len(rows) * max(lengths)  # less padding than a padded batch
    assert sorted(i for line in plan.lines for i in line) == list(range(len(rows)))
    torch.testing.assert_close(
        prefix.last_token_states(rows, layer), plain(host, rows, layer), atol=1e-4, rtol=1e-4
    )


def test_bfloat16_states_follow_float32(host: ModelHost, tiny_model_dir: Path, tiny_bundle: Bundle) -> None:
    """The classifier's --dtype bfloat16: same states within bf16 rounding, on both paths."""
    half = ModelHost.load(tiny_model_dir, max_layers=tiny_bundle.probe_layer + 1, dtype="bfloat16")
    assert half.model.dtype == torch.bfloat16
    layer = tiny_bundle.probe_layer
    rows = [host.token_ids(normalise_request(p)) for p in PROMPTS]
    want = plain(host, rows, layer)
    prefix = SharedPrefix.for_host(half)
    assert prefix is not None
    for got in (prefix.last_token_states(rows, layer), plain(half, rows, layer)):
        assert got.dtype == torch.float32  # the probe always reads float32
        cos = torch.nn.functional.cosine_similarity(got, want, dim=1)
        assert float(cos.min()) > 0.999, cos
        assert not torch.equal(got, want)  # really computed in bfloat16


def test_auto_picks_bfloat16_only_where_the_cpu_computes_it_natively(tmp_path: Path) -> None:
    from steerguard.model.host import cpu_flags, resolve_dtype

    assert resolve_dtype("auto", {"avx2", "avx512f", "avx512_bf16"}) == "bfloat16"
    assert resolve_dtype("auto", {"amx_bf16"}) == "bfloat16"
    assert resolve_dtype("auto", {"avx2", "avx512f"}) == "float32"
    assert resolve_dtype("auto", set()) == "float32"  # unknown CPU (no /proc/cpuinfo): the safe choice
    assert resolve_dtype("float32", {"avx512_bf16"}) == "float32"  # an explicit choice stands
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16\n")
    assert "avx512_bf16" in cpu_flags(str(info)) and cpu_flags(str(tmp_path / "none")) == set()


def test_an_unknown_dtype_is_refused(tiny_model_dir: Path) -> None:
    from steerguard.errors import ModelError

    with pytest.raises(ModelError, match="dtype must be one of float32, bfloat16"):
        ModelHost.load(tiny_model_dir, dtype="float16")
