"""``--backend openvino|onnxruntime``: a single prompt's pass after the template prefix, compiled.

Each engine's trunk must read the same states as the PyTorch prefix path
(last token and the mean over the request's words), and a core with the
backend must serve it for single prompt views and the same verdicts.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from classifier_service import accelerated
from classifier_service.accelerated import (
    CompiledPassages,
    CompiledTrunk,
    OnnxRuntimeInt8Trunk,
    OnnxRuntimeTrunk,
    OpenVinoTrunk,
)
from classifier_service.core import ClassifierCore, CoreConfig
from classifier_service.prefix import SharedPrefix
from steerguard.bundle import Bundle
from steerguard.model.activations import batch_spans
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost
from steerguard.model.spans import TurnMarkers
from steerguard.passages import ender_ids, position_states, split, text_ids
from tests.test_classifier_categories import with_content_head

PROMPTS = ["Explain how tides work on the coast", "Hi", "How do I make a pipe bomb at home? Be detailed."]


@pytest.fixture(scope="module")
def host(tiny_model_dir: Path, tiny_bundle: Bundle) -> ModelHost:
    return ModelHost.load(tiny_model_dir, max_layers=tiny_bundle.probe_layer + 1)


@pytest.mark.parametrize("engine", accelerated.ENGINES)
def test_the_trunk_reads_the_prefix_paths_states(host: ModelHost, tiny_bundle: Bundle, engine: str) -> None:
    """Short prompts run at their own length; the long one runs padded at its end
    (``trunk_width``) and still reads its last real token's state and its span's mean."""
    layer = tiny_bundle.probe_layer
    trunk: CompiledTrunk = (
        OpenVinoTrunk.build(host, layer, threads=2, precision="f32")
        if engine == "openvino"
        else OnnxRuntimeInt8Trunk.build(host, layer, threads=2)
        if engine == accelerated.INT8
        else OnnxRuntimeTrunk.build(host, layer, threads=2)
    )
    assert trunk.engine == engine
    close = assert_int8_close if engine == accelerated.INT8 else assert_float_close
    prefix = SharedPrefix.for_host(host)
    assert prefix is not None and trunk.prefix_len == len(prefix)
    markers = TurnMarkers.for_tokenizer(host.tokenizer)
    padded = "Tell me about tides and the moon, " * 12
    steps = len(host.token_ids(normalise_request(padded))) - len(prefix)
    assert accelerated.trunk_width(steps) > steps
    for text in [*PROMPTS, padded]:
        row = host.token_ids(normalise_request(text))
        (span,) = batch_spans(host.pad([row]), markers)
        want = prefix.states_at([row], [layer], spans=[span])
        got = trunk.states_at(row, span)
        close(got.states[layer], want.states[layer])
        assert got.content is not None and want.content is not None
        close(got.content, want.content)
        assert trunk.states_at(row, None).content is None


def assert_float_close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def assert_int8_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """int8 products move a state a little, in every direction but its own."""
    assert not torch.allclose(got, want, atol=1e-6, rtol=1e-6)  # quantised, not the float32 graph
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() > 0.99
    assert (got.norm() / want.norm()).item() == pytest.approx(1.0, abs=0.05)


def test_trunk_widths_pad_long_suffixes_a_little_and_meet_few_lengths() -> None:
    widths = [accelerated.trunk_width(n) for n in range(1, 513)]
    assert widths[:64] == list(range(1, 65))  # short suffixes run as they are
    assert all(n <= w <= 1.125 * n for n, w in enumerate(widths, start=1))
    assert len(set(widths)) == 88 and max(widths) == 512
    assert accelerated.trunk_width(65) == 72 and accelerated.trunk_width(129) == 144


def test_a_core_with_the_backend_serves_single_prompts_with_it(
    host: ModelHost, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    bundle = with_content_head(tiny_bundle, tmp_path)
    plain = ClassifierCore(host, bundle, None, CoreConfig(max_batch_wait_ms=0, backend="torch"))
    fast = ClassifierCore(host, bundle, None, CoreConfig(max_batch_wait_ms=0))  # auto: this CPU's fastest
    assert (plain.backend, fast.backend) == ("torch", accelerated.auto_engine())
    assert fast.backend in accelerated.ENGINES
    try:
        for text in PROMPTS:
            (want,) = plain.classify([normalise_request(text)])
            (got,) = fast.classify([normalise_request(text)])
            assert got.score == pytest.approx(want.score, abs=0.05)
            assert got.category_scores.keys() == want.category_scores.keys()
            for name, value in want.category_scores.items():  # the content head read the words
                assert got.category_scores[name] == pytest.approx(value, abs=0.05), name
        assert fast._trunk is not None and fast._trunk.calls >= len(PROMPTS)
        calls = fast._trunk.calls
        fast.classify([normalise_request(t) for t in ("A", "B c d", "E f")])  # one step of three: PyTorch
        assert fast._trunk.calls == calls
    finally:
        plain.close()
        fast.close()


def assert_serves_in_pytorch(core: ClassifierCore) -> None:
    """``core`` took no OpenVINO trunk, and still classifies."""
    try:
        assert core.backend == "torch"
        (verdict,) = core.classify([normalise_request("Hi")])
        assert 0.0 <= verdict.score <= 1.0
    finally:
        core.close()


def test_openvino_needs_the_shared_prefix_and_auto_falls_back(host: ModelHost, tiny_bundle: Bundle) -> None:
    config = CoreConfig(max_batch_wait_ms=0, share_prefix=False, backend="openvino")
    with pytest.raises(ValueError, match="prefix"):
        ClassifierCore(host, tiny_bundle, None, config)
    assert_serves_in_pytorch(
        ClassifierCore(host, tiny_bundle, None, CoreConfig(max_batch_wait_ms=0, share_prefix=False))
    )


def test_auto_falls_back_to_pytorch_when_the_export_fails(
    host: ModelHost, tiny_bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> OpenVinoTrunk:
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(accelerated, "shared_trunk", broken)
    assert_serves_in_pytorch(ClassifierCore(host, tiny_bundle, None, CoreConfig(max_batch_wait_ms=0)))
    with pytest.raises(RuntimeError, match="exporter broke"):
        ClassifierCore(host, tiny_bundle, None, CoreConfig(max_batch_wait_ms=0, backend="openvino"))


@pytest.mark.parametrize("engine", accelerated.ENGINES)
def test_a_named_engine_serves_single_prompts(host: ModelHost, tiny_bundle: Bundle, engine: str) -> None:
    plain = ClassifierCore(host, tiny_bundle, None, CoreConfig(max_batch_wait_ms=0, backend="torch"))
    named = ClassifierCore(host, tiny_bundle, None, CoreConfig(max_batch_wait_ms=0, backend=engine))
    try:
        assert named.backend == engine
        for text in PROMPTS:
            (want,) = plain.classify([normalise_request(text)])
            (got,) = named.classify([normalise_request(text)])
            assert got.score == pytest.approx(want.score, abs=0.05)
        assert named._trunk is not None and named._trunk.calls >= len(PROMPTS)
    finally:
        plain.close()
        named.close()


def test_auto_takes_openvino_where_the_cpu_has_native_bf16_else_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accelerated, "native_bf16", lambda: True)
    assert accelerated.auto_engine() == "openvino"
    monkeypatch.setattr(accelerated, "native_bf16", lambda: False)
    assert accelerated.auto_engine() == accelerated.INT8  # int8 weights where bf16 is not native
    monkeypatch.setattr(accelerated, "available", lambda engine="openvino": engine == "openvino")
    assert accelerated.auto_engine() == "openvino"  # float32, where ONNX Runtime is missing
    monkeypatch.setattr(accelerated, "available", lambda engine="openvino": False)
    assert accelerated.auto_engine() is None


def test_warm_up_runs_each_length_once_and_onnx_runtime_does_not_spin(
    host: ModelHost, tiny_bundle: Bundle
) -> None:
    """The trunk runs every suffix length up to ``warm_lengths`` once (a shared trunk warms once,
    its answers unchanged), and ONNX Runtime's threads sleep between runs instead of spinning."""
    layer = tiny_bundle.probe_layer
    trunk = OnnxRuntimeTrunk.build(host, layer, threads=2)
    row = host.token_ids(normalise_request(PROMPTS[0]))
    before = trunk.states_at(row, None).states[layer]
    seen: list[int] = []
    run = trunk._run
    trunk._run = lambda inputs: seen.append(inputs["input_ids"].shape[1]) or run(inputs)  # type: ignore[method-assign]
    trunk.warm(6, row[-1])
    trunk.warm(4, row[-1])  # nothing new
    trunk.warm(8, row[-1])  # only the lengths not yet run
    assert seen == [1, 2, 3, 4, 5, 6, 7, 8]
    trunk.warm(100, row[-1])  # past the exact widths, each padded width once
    assert seen[8:] == [*range(9, 65), 72, 80, 88, 96, 104]
    torch.testing.assert_close(trunk.states_at(row, None).states[layer], before)
    with accelerated.exported(host, layer) as (graph, _):  # the trunk keeps no handle on its session
        options = accelerated.ort_session(graph, threads=2).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # A core warms its compiled trunk before serving, as far as its config says.
    core = ClassifierCore(host, tiny_bundle, None, CoreConfig(max_batch_wait_ms=0, warm_lengths=5))
    try:
        assert core._trunk is not None
        core.warm_up()
        assert core._trunk._warmed >= 5
    finally:
        core.close()


LONG_TEXT = " ".join(f"Sentence number {i} is plain; nothing more." for i in range(60))


def test_compiled_passages_read_the_pytorch_passage_states(host: ModelHost) -> None:
    # Full windows and a short last one, each read alone by the compiled pass.
    layers = (0, 1)
    reader = CompiledPassages.build(host, layers, threads=2, precision="f32")
    passages = split(text_ids(host, LONG_TEXT), ender_ids(host.tokenizer), 64, 16)
    assert len({len(p.ids) for p in passages}) > 1
    want = position_states(host, passages, layers)
    got = position_states(host, passages, layers, reader.hidden)
    for layer in layers:
        torch.testing.assert_close(got[layer], want[layer], atol=1e-4, rtol=1e-4)
    assert reader.calls == len(passages)
    reader.warm(130)  # every padded length a 130-token window can take: 64, 128 and 192
    assert reader.calls == len(passages) + 3


@pytest.mark.parametrize("engine", accelerated.ENGINES)
def test_a_core_with_a_compiled_trunk_reads_a_long_texts_passages_compiled(
    host: ModelHost, tmp_path: Path, engine: str
) -> None:
    """Beside either engine's trunk (ONNX Runtime is what CPUs without native bf16 take), passages
    are read by OpenVINO; ``--backend torch`` and the operator's switch keep them in PyTorch."""
    from devstack.models import make_random_bundle

    bundle = make_random_bundle(host, tmp_path / "b", passage_tokens=64)
    config = CoreConfig(max_batch_wait_ms=0, max_prompt_tokens=96)
    plain = ClassifierCore(host, bundle, None, replace(config, backend="torch"))
    fast = ClassifierCore(host, bundle, None, replace(config, backend=engine))
    lean = ClassifierCore(host, bundle, None, replace(config, backend=engine, compiled_passages=False))
    try:
        assert plain.passage_engine == "torch" and fast.passage_engine == "openvino"
        assert lean.backend == engine and lean.passage_engine == "torch"  # the operator's switch
        conv = normalise_request(LONG_TEXT)
        assert fast.windows.plan(conv).passages
        assert fast._passages is not None
        calls = fast._passages.calls
        (want,) = plain.classify([conv])
        (got,) = fast.classify([conv])
        assert got.score == pytest.approx(want.score, abs=0.05)
        assert fast._passages.calls > calls
    finally:
        plain.close()
        fast.close()
        lean.close()


def test_the_compiled_paths_run_in_the_served_precision(
    tiny_model_dir: Path, host: ModelHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 only for a bfloat16 model on a CPU with native bf16: ``--dtype float32`` holds."""
    monkeypatch.setattr(accelerated, "native_bf16", lambda: True)
    assert host.model.dtype == torch.float32 and accelerated.precision_of(host) == "f32"
    half = ModelHost.load(tiny_model_dir, max_layers=2, dtype="bfloat16")
    assert accelerated.precision_of(half) == "bf16"
    monkeypatch.setattr(accelerated, "native_bf16", lambda: False)
    assert accelerated.precision_of(half) == "f32"


def test_a_second_build_reads_the_graph_from_the_cache(
    host: ModelHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEERGUARD_CACHE_DIR", str(tmp_path))
    exports: list[Path] = []
    real = accelerated.export_in_child

    def counted(kind: str, model: Path, layers: tuple[int, ...], folder: Path) -> Path:
        exports.append(folder)
        return real(kind, model, layers, folder)

    monkeypatch.setattr(accelerated, "export_in_child", counted)
    first = CompiledPassages.build(host, (1,), threads=2, precision="f32")
    again = CompiledPassages.build(host, (1,), threads=2, precision="f32")
    assert len(exports) == 1
    ids = text_ids(host, LONG_TEXT)[:40]
    torch.testing.assert_close(again.hidden(ids, (1,))[1], first.hidden(ids, (1,))[1])
    OpenVinoTrunk.build(host, 1, threads=2, precision="f32")  # another graph: its own entry
    assert len(exports) == 2
    monkeypatch.setattr(accelerated, "code_version", lambda *_: "changed")  # new code: exported again
    CompiledPassages.build(host, (1,), threads=2, precision="f32")
    assert len(exports) == 3
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "compiled").iterdir() if p.is_dir()) == [
        "passages",
        "trunk",
    ]


def test_an_export_that_fails_in_its_process_says_why(host: ModelHost, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exporting the trunk graph failed: .*ValueError"):
        accelerated.export_in_child("trunk", host.source, (0, 1), tmp_path)  # a trunk reads one layer
    assert not (tmp_path / "trunk.onnx").exists()


def test_a_prepared_cache_lets_a_server_start_without_exporting(
    host: ModelHost, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``--prepare-only`` exports what the server would (trunk and passages) and, under ``auto``,
    the int8 trunk that ``auto`` takes on CPUs without native bf16 (an image is prepared on one
    CPU, run on others), and exits; a server pointed at it (``STEERGUARD_PREPARED_CACHE_DIR``,
    read-only as in the image) with an empty writable cache, as a new pod has, reads its graphs
    from it and exports or quantises nothing."""
    import json
    import os
    import re
    import subprocess
    import sys

    from devstack.models import make_random_bundle
    from tests.test_classifier_cli import REPO, _wait_for_log

    make_random_bundle(host, tmp_path / "b", passage_tokens=64)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "STEERGUARD_MODEL": str(tiny_model_dir),
        "STEERGUARD_BUNDLE": str(tmp_path / "b"),
        "STEERGUARD_BACKEND": "auto",
        "STEERGUARD_LOG_FORMAT": "json",
        "STEERGUARD_THREADS": "1",
        "STEERGUARD_HOST": "127.0.0.1",
        "STEERGUARD_PORT": "0",
        "STEERGUARD_METRICS_PORT": "0",
    }
    command = [sys.executable, "-m", "steerguard", "serve", "classifier"]
    prepared = tmp_path / "prepared"
    done = subprocess.run(
        [*command, "--prepare-only"],
        env={**env, "STEERGUARD_CACHE_DIR": str(prepared)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    done_event = next(e for e in events if e.get("event") == "classifier prepared")
    assert done_event["passages"] == "openvino" and done_event["graphs"] == ["trunk", "trunk-int8"]
    kinds = [re.sub(r"-[0-9a-f]{16}-.*", "", p.name) for p in (prepared / "compiled").iterdir() if p.is_dir()]
    assert sorted(kinds) == ["passages", "trunk", "trunk-int8"]
    writable = tmp_path / "writable"
    for folder in (prepared, *prepared.rglob("*")):
        folder.chmod(0o555 if folder.is_dir() else 0o444)
    proc = subprocess.Popen(
        command,
        env={**env, "STEERGUARD_CACHE_DIR": str(writable), "STEERGUARD_PREPARED_CACHE_DIR": str(prepared)},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[dict[str, object]] = []
    try:
        _wait_for_log(proc, "classifier serving", seen, timeout=120)
    finally:
        proc.kill()
        proc.wait()
        for folder in (prepared, *prepared.rglob("*")):
            folder.chmod(0o755)
    read = [r.get("graph") for r in seen if r.get("event") == "exported graph from the prepared cache"]
    assert len(read) == (3 if accelerated.auto_engine() == accelerated.INT8 else 2)
    assert not (writable / "compiled").exists()
