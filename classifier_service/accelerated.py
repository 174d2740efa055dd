"""A cache miss's forward pass compiled by OpenVINO or ONNX Runtime (``--backend``).

Why: a miss runs the decoder up to the probe layer after the template's
cached prefix, and that pass is most of a miss's time. Measured side by side
(bench/bench_onnx.py, 100 prompts, 2 cores): on a CPU with native bf16,
OpenVINO with a bfloat16 hint runs it in 24.5 ms against PyTorch bfloat16's
41.4 ms, with states closer to float32's; on one without (AVX2 only), ONNX
Runtime in float32 was the fastest (:func:`auto_engine`). The graph is a
plain Llama forward written with the model's own modules
(:class:`PrefixedTrunk`), the prefix's keys and values baked in as
constants, exported with ``torch.onnx.export``, then compiled by OpenVINO
(:class:`OpenVinoTrunk`) or loaded by ONNX Runtime (:class:`OnnxRuntimeTrunk`).

It serves what it was measured on: one prompt view that starts with the
template prefix, in a step of its own, on a bundle without an early exit.
Where that engine is OpenVINO, a long text's passages run compiled as well
(:class:`PassageTrunk`, :class:`CompiledPassages`: no prefix, each window's
states at the passage head's layers). Packed batches, chunked long prompts
and answer windows stay in PyTorch (:class:`classifier_service.core.ClassifierCore`
decides). Besides
the probe layer's last state it returns the mean over the request's words
(the content category head reads it), from a weight per position.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import classifier_service.prefix as prefix_module
import classifier_service.quantized as quantized_module
from classifier_service.graph_cache import GRAPH, cached_graph, code_version, made_in_child
from classifier_service.prefix import SharedPrefix, template_prefix
from classifier_service.quantized import INT8_PROJECTIONS, quantize_in_child
from steerguard.model.activations import LayerStates
from steerguard.model.host import ModelHost
from steerguard.model.spans import Span

INPUTS = ("input_ids", "position_ids", "span_weights", "last_weights")
PASSAGE_INPUTS = ("input_ids", "position_ids")  # the passage graph's (PassageTrunk)


def _layer_kv(cache: Any, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``i``'s cached keys and values, under either transformers cache API."""
    if hasattr(cache, "layers"):
        return cache.layers[i].keys, cache.layers[i].values
    return cache.key_cache[i], cache.value_cache[i]


class _Decoder(nn.Module):
    """The model's first ``depth`` decoder layers, written out so that an exporter sees plain ops."""

    def __init__(self, host: ModelHost, depth: int) -> None:
        super().__init__()
        base = host.model.model
        self.embed: nn.Module = base.embed_tokens
        self.rotary: nn.Module = base.rotary_emb
        self.layers = nn.ModuleList(list(host.layers)[:depth])
        cfg = host.model.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def _block(
        self, i: int, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], bias: torch.Tensor
    ) -> torch.Tensor:
        """Layer ``i`` over ``h`` (``bias``: the additive attention mask over past and new keys)."""
        layer: Any = self.layers[i]  # a decoder layer: its norms and MLP are modules
        h = h + self._attend(layer, layer.input_layernorm(h), rope, bias, i)
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def _past(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Layer ``i``'s keys and values before the first new token (none here)."""
        return None

    def _attend(
        self, block: Any, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], bias: torch.Tensor, i: int
    ) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        attn, steps = block.self_attn, x.shape[1]
        q = attn.q_proj(x).view(1, steps, self.heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(1, steps, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(1, steps, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *rope)
        past = self._past(i)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        weights = torch.softmax(q @ k.transpose(2, 3) / self.head_dim**0.5 + bias, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(1, steps, self.heads * self.head_dim)
        return attn.o_proj(out)


def _causal_bias(steps: int, before: int) -> torch.Tensor:
    """``[steps, before + steps]``: 0 where a new token may attend (``before`` past keys), else -inf."""
    keys = torch.arange(before + steps)[None, :]
    allowed = keys <= (torch.arange(steps)[:, None] + before)
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


class PrefixedTrunk(_Decoder):
    """The decoder up to ``layer`` after a fixed prefix.

    (suffix ids ``[1, T]``, positions ``[1, T]``, span weights ``[1, T]``,
    last weights ``[1, T]``) -> ``[1, 2H]``: the state the last weights pick
    (one-hot at the suffix's last real token: a suffix padded at its end,
    :func:`trunk_width`, reads the same states), then the weighted sum of the
    states (the span weights average the content span; all zero: no span).
    """

    def __init__(self, host: ModelHost, prefix: SharedPrefix, layer: int) -> None:
        super().__init__(host, layer + 1)
        cache = prefix.cache()
        for i in range(layer + 1):
            k, v = _layer_kv(cache, i)
            self.register_buffer(f"k{i}", k.float().contiguous())
            self.register_buffer(f"v{i}", v.float().contiguous())
        self.prefix_len = len(prefix)

    def _past(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"k{i}"), getattr(self, f"v{i}")

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        span_weights: torch.Tensor,
        last_weights: torch.Tensor,
    ) -> torch.Tensor:
        h = self.embed(input_ids)
        rope = self.rotary(h, position_ids)
        bias = _causal_bias(input_ids.shape[1], self.prefix_len)
        for i in range(len(self.layers)):
            h = self._block(i, h, rope, bias)
        return torch.cat([last_weights @ h[0], span_weights @ h[0]], dim=-1)


class PassageTrunk(_Decoder):
    """The decoder up to the deepest of ``layers`` over a passage's raw tokens (no prefix).

    (ids ``[1, T]``, positions ``[1, T]``) -> ``[len(layers), T, H]``: every
    position's state at each of ``layers``, as the passage probe reads them
    (:func:`steerguard.passages.position_states`).
    """

    def __init__(self, host: ModelHost, layers: tuple[int, ...]) -> None:
        super().__init__(host, max(layers) + 1)
        self.wanted = layers

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)
        rope = self.rotary(h, position_ids)
        bias = _causal_bias(input_ids.shape[1], 0)
        out = []
        for i in range(len(self.layers)):
            h = self._block(i, h, rope, bias)
            if i in self.wanted:
                out.append(h[0])
        return torch.stack(out)


def export(trunk: nn.Module, folder: Path, example: dict[str, np.ndarray]) -> Path:
    """``trunk`` as an ONNX graph in ``folder``, its inputs named as ``example``'s keys, each of
    dynamic length (axis 1)."""
    path = folder / GRAPH
    steps = torch.export.Dim("steps", min=1, max=4096)
    # The exporter warns about itself (deprecations, axis names): not ours to fix, and errors
    # where warnings are errors (the test suite).
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)  # "the axis name steps will not be used"
        torch.onnx.export(
            trunk,
            tuple(torch.from_numpy(value) for value in example.values()),
            str(path),
            input_names=list(example),
            output_names=["states"],
            dynamic_shapes={name: {1: steps} for name in example},
            dynamo=True,
            external_data=True,
            verbose=False,
        )
    return path


def _padded(ids: Sequence[int], unit: int) -> np.ndarray:
    """``[1, W]``: ``ids`` padded at their end (with their last token) to a multiple ``W`` of
    ``unit``. The compiled paths read only the real tokens' states, which padding at the end
    leaves as they are (attention is causal), so an engine meets few input lengths."""
    width = -(-len(ids) // unit) * unit
    return np.asarray([[*ids, *([ids[-1]] * (width - len(ids)))]], dtype=np.int64)


# Suffixes up to this many tokens run at their own length; longer ones are padded (trunk_width).
EXACT_WIDTHS = 64


def trunk_width(steps: int) -> int:
    """The input length a suffix of ``steps`` tokens runs at: its own up to :data:`EXACT_WIDTHS`,
    then padded at its end to a multiple of a sixteenth of the next power of two (72, 80 ...
    128, 144 ... 256, 288 ... 512): at most ~12% more tokens, and 88 lengths up to 512.

    Why: OpenVINO prepares each input length on its first call and keeps ~2.7 MiB
    for it, so a server that met every length up to a step's 512 tokens held ~0.7
    GiB more than at SERVING, and warming them all took too long for a start.
    Padding at the end leaves the real tokens' states as they are (attention is
    causal), and the graph reads the last real token (``last_weights``).
    """
    return len(_padded([0] * steps, _trunk_unit(steps))[0])


def _trunk_unit(steps: int) -> int:
    """What :func:`trunk_width` rounds a suffix of ``steps`` tokens up to a multiple of."""
    return 1 if steps <= EXACT_WIDTHS else 1 << ((steps - 1).bit_length() - 4)


def feeds(prefix_len: int, suffix: list[int], span: Span | None) -> dict[str, np.ndarray]:
    """The graph's inputs for one row's ``suffix`` (the tokens after the prefix), padded at its
    end to :func:`trunk_width`.

    ``span`` counts positions from the row's first token, prefix included, as
    :meth:`SharedPrefix.states_at` does; its part after the prefix is averaged
    (at least the position where it starts).
    """
    steps = len(suffix)
    ids = _padded(suffix, _trunk_unit(steps))
    width = ids.shape[1]
    weights = np.zeros((1, width), dtype=np.float32)
    if span is not None:
        a = max(span[0], prefix_len) - prefix_len
        b = max(span[1] - prefix_len, a + 1)
        a, b = min(a, steps - 1), min(b, steps)
        weights[0, a:b] = 1.0 / (b - a)
    last = np.zeros((1, width), dtype=np.float32)
    last[0, steps - 1] = 1.0
    return {
        "input_ids": ids,
        "position_ids": np.arange(prefix_len, prefix_len + width, dtype=np.int64)[None, :],
        "span_weights": weights,
        "last_weights": last,
    }


# ONNX Runtime with int8 weights in three projections (classifier_service.quantized).
INT8 = "onnxruntime-int8"
ENGINES = ("openvino", "onnxruntime", INT8)


def available(engine: str = "openvino") -> bool:
    """True when the optional package of ``engine`` is installed."""
    return importlib.util.find_spec("onnxruntime" if engine == INT8 else engine) is not None


def native_bf16() -> bool:
    """True when OpenVINO finds native bf16 on this CPU (AVX512-BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def precision_of(host: ModelHost) -> str:
    """OpenVINO's inference precision for ``host``'s compiled paths: ``bf16`` where the model is
    served in bfloat16 on a CPU with native bf16, else ``f32``, so that an operator's
    ``--dtype float32`` holds for the compiled paths too (they are exported from a float32 copy)."""
    return "bf16" if host.model.dtype == torch.bfloat16 and native_bf16() else "f32"


def auto_engine() -> str | None:
    """The engine ``--backend auto`` takes: what was measured fastest on the CPU at hand.

    OpenVINO in bf16 where the CPU has native bf16 (24.5 ms against ONNX
    Runtime's 39.2 ms, float32); elsewhere ONNX Runtime with 7-bit weights in
    three projections (:data:`INT8`; served on an AVX-512 VNNI CPU at 1.35-1.39x
    a MiniLM + LR call against float32's 1.79-1.80x, side by side; chosen on
    calibration prompts, 12 of 1,901 verdicts changed; held out 12 of 1,011,
    docs/benchmarks.md); OpenVINO in float32 where ONNX Runtime is missing; None
    when neither is installed. An operator who wants float32 names
    ``--backend onnxruntime``.
    """
    if available("openvino") and native_bf16():
        return "openvino"
    return next((engine for engine in (INT8, "openvino") if available(engine)), None)


_BUILT: dict[tuple[str, str, int, int, str], CompiledTrunk] = {}
_BUILT_LOCK = threading.Lock()


def shared_trunk(host: ModelHost, layer: int, threads: int, engine: str = "openvino") -> CompiledTrunk:
    """One trunk per model, layer and engine in a process (an export takes ~20 s for SmolLM2):
    a bundle reload, or a second core on the same model, reuses it."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} ({', '.join(ENGINES)})")
    key = (str(host.source), engine, layer, threads, str(host.model.dtype))
    with _BUILT_LOCK:
        if key not in _BUILT:
            if engine == "openvino":
                _BUILT[key] = OpenVinoTrunk.build(host, layer, threads, precision_of(host))
            else:
                kind = OnnxRuntimeInt8Trunk if engine == INT8 else OnnxRuntimeTrunk
                _BUILT[key] = kind.build(host, layer, threads)
        return _BUILT[key]


@contextmanager
def exported(host: ModelHost, layer: int) -> Iterator[tuple[Path, int]]:
    """The trunk's ONNX graph, from a float32 copy of ``host``'s model (kept in the graph cache,
    :mod:`classifier_service.graph_cache`), and the template prefix's length."""
    ids = template_prefix(host)
    make = functools.partial(export_in_child, "trunk", host.source, (layer,))
    with cached_graph(*_entry(host, "trunk", (layer,), prefix=ids), make) as graph:
        yield graph, len(ids)


# Graphs :func:`export_graph` makes: the single-prompt trunk after the template prefix, and passages.
KINDS = ("trunk", "passages")


def export_graph(kind: str, model: Path, layers: tuple[int, ...], folder: Path) -> Path:
    """Export the ``kind`` of graph from a float32 copy of ``model`` into ``folder`` (in this process)."""
    source = ModelHost.load(model, max_layers=max(layers) + 1, dtype="float32")
    if kind == "passages":
        example = dict(zip(PASSAGE_INPUTS, (np.asarray([[1, 2, 3]]), np.arange(3)[None, :]), strict=True))
        return export(PassageTrunk(source, layers).eval(), folder, example)
    if kind != "trunk" or len(layers) != 1:
        raise ValueError(f"unknown graph {kind!r} of layers {layers}")
    prefix = SharedPrefix.for_host(source)
    if prefix is None:
        raise ValueError("the chat template has no shared prefix for the compiled trunk to start after")
    trunk = PrefixedTrunk(source, prefix, layers[0]).eval()
    return export(trunk, folder, feeds(len(prefix), [1, 2, 3], None))


def export_in_child(kind: str, model: Path, layers: tuple[int, ...], folder: Path) -> Path:
    """:func:`export_graph` in a process of its own (``python -m classifier_service.export_graph``;
    :func:`~classifier_service.graph_cache.made_in_child` says why)."""
    args = [kind, str(model), str(folder), *map(str, layers)]
    return made_in_child("classifier_service.export_graph", args, folder, f"exporting the {kind} graph")


def _entry(host: ModelHost, kind: str, layers: tuple[int, ...], **baked: Any) -> tuple[str, dict[str, Any]]:
    """A graph cache entry's name and key: what the graph holds, and the code that made it."""
    sha = host.identity.sha256
    name = f"{kind}-{sha[:16]}-{'-'.join(map(str, layers))}"
    code = code_version(Path(__file__), Path(prefix_module.__file__))  # its keys and values are baked in
    key = {"weights": sha, "layers": list(layers), **baked, "code": code}
    return name, key


class CompiledTrunk:
    """A compiled trunk; :meth:`states_at` reads one row as :meth:`SharedPrefix.states_at` would.

    ``run`` takes the graph's named inputs and returns its one output.
    """

    engine = ""

    def __init__(
        self, run: Callable[[dict[str, np.ndarray]], np.ndarray], prefix_len: int, layer: int, hidden: int
    ) -> None:
        self._run, self.prefix_len, self.layer, self._hidden = run, prefix_len, layer, hidden
        self.calls = 0  # rows read (a metric for tests and logs)
        self._warmed = 0  # suffix lengths 1.._warmed have run once (warm)
        self._widths: set[int] = set()  # the input lengths (trunk_width) warm-up ran
        self._lock = threading.Lock()  # one inference at a time: cores that share the trunk take turns

    def warm(self, lengths: int, token: int) -> None:
        """Run once on every input length a suffix of 1 to ``lengths`` tokens takes
        (:func:`trunk_width`) not run before (see ``CoreConfig.warm_lengths``); a trunk shared
        by several cores warms once."""
        with self._lock:
            self._warmed = max(self._warmed, lengths)
            for width in sorted({trunk_width(steps) for steps in range(1, lengths + 1)} - self._widths):
                self._run(feeds(self.prefix_len, [token] * width, None))
                self._widths.add(width)

    def states_at(self, row: list[int], span: Span | None) -> LayerStates:
        """The layer's last state ``[1, H]`` and, with ``span``, its mean over the span ``[1, H]``."""
        inputs = feeds(self.prefix_len, row[self.prefix_len :], span)
        with self._lock:
            self.calls += 1
            states = torch.from_numpy(np.asarray(self._run(inputs), dtype=np.float32))
        last, mean = states[:, : self._hidden], states[:, self._hidden :]
        return LayerStates({self.layer: last}, mean if span is not None else None)


class OpenVinoTrunk(CompiledTrunk):
    """The trunk compiled by OpenVINO."""

    engine = "openvino"

    @classmethod
    def build(cls, host: ModelHost, layer: int, threads: int, precision: str | None = None) -> OpenVinoTrunk:
        """Export and compile (``precision``: :func:`openvino_runner`'s)."""
        with exported(host, layer) as (graph, prefix_len):
            run = openvino_runner(graph, INPUTS, threads, precision)
        return cls(run, prefix_len, layer, host.identity.hidden_size)


def openvino_runner(
    graph: Path, names: tuple[str, ...], threads: int, precision: str | None = None
) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """``graph`` compiled by OpenVINO for the CPU: a call takes the named inputs, returns the output.

    ``precision``: the inference precision hint, ``bf16`` or ``f32``; by
    default bf16 where the CPU has native bf16 (as measured).
    """
    import openvino as ov

    precision = precision or ("bf16" if native_bf16() else "f32")
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision}
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(graph)), "CPU", config)

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(compiled([inputs[name] for name in names])[compiled.output(0)])

    return run


def ort_session(graph: Path, threads: int) -> Any:
    """An ONNX Runtime session over ``graph``: all graph optimisations, ``threads`` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Its threads sleep between runs instead of spinning: spinning kept the cores from the next
    # engine's call (OpenVINO's miss in the same process took 14.0 ms right after an ONNX
    # Runtime call, 9.4 ms without spinning, 7.6 ms alone) and did not speed ONNX Runtime up.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeTrunk(CompiledTrunk):
    """The trunk run by ONNX Runtime, in float32."""

    engine = "onnxruntime"

    @classmethod
    def build(cls, host: ModelHost, layer: int, threads: int) -> OnnxRuntimeTrunk:
        """Export and load (the session holds the weights once made; the folder may go)."""
        with cls.graph(host, layer) as (graph, prefix_len):
            session = ort_session(graph, threads)

        def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            return np.asarray(session.run(None, inputs)[0])

        return cls(run, prefix_len, layer, host.identity.hidden_size)

    @staticmethod
    @contextmanager
    def graph(host: ModelHost, layer: int) -> Iterator[tuple[Path, int]]:
        """The graph this engine runs, and the template prefix's length."""
        with exported(host, layer) as found:
            yield found


class OnnxRuntimeInt8Trunk(OnnxRuntimeTrunk):
    """The trunk run by ONNX Runtime, int8 in three projections (:mod:`classifier_service.quantized`)."""

    engine = INT8

    @staticmethod
    @contextmanager
    def graph(host: ModelHost, layer: int) -> Iterator[tuple[Path, int]]:
        """The float32 graph quantised (made once, kept in the graph cache beside it)."""
        import onnxruntime

        with exported(host, layer) as (source, prefix_len):
            baked = {"projections": list(INT8_PROJECTIONS), "onnxruntime": onnxruntime.__version__}
            name, key = _entry(host, "trunk-int8", (layer,), prefix=template_prefix(host), **baked)
            key["quantizer"] = code_version(Path(quantized_module.__file__))
            with cached_graph(name, key, functools.partial(quantize_in_child, source)) as graph:
                yield graph, prefix_len


def prepare_auto(host: ModelHost, layer: int) -> list[str]:
    """Make the trunk graphs ``--backend auto`` may take on any CPU (``--prepare-only``), and name
    them: an image is prepared on one CPU and run on others, where a missing int8 graph would be
    quantised at start-up (a child process holding the whole model)."""
    made = []
    if available("onnxruntime") or available("openvino"):
        with exported(host, layer):  # what the int8 graph is made from, and OpenVINO's graph
            made.append("trunk")
    if available(INT8):
        with OnnxRuntimeInt8Trunk.graph(host, layer):
            made.append("trunk-int8")
    return made


# Passage lengths are padded to a multiple of this before the compiled pass (CompiledPassages.hidden).
PASSAGE_BUCKET = 64


class CompiledPassages:
    """Passages read by a compiled :class:`PassageTrunk` (OpenVINO): :meth:`hidden` is the
    ``hidden_of`` of :func:`steerguard.passages.position_states`.

    Why: a long text's windows are most of its cost (512 tokens each, up to
    the passage layer), and on a CPU with native bf16 OpenVINO reads a window
    in 0.13 s against PyTorch bfloat16's 0.17 s, with states closer to
    float32's (docs/benchmarks.md).
    """

    engine = "openvino"

    def __init__(self, run: Callable[[dict[str, np.ndarray]], np.ndarray], layers: tuple[int, ...]) -> None:
        self._run, self.layers = run, layers
        self.calls = 0  # passages read (a metric for tests)
        self._lock = threading.Lock()  # one inference at a time: cores that share it take turns

    @classmethod
    def build(
        cls, host: ModelHost, layers: tuple[int, ...], threads: int, precision: str | None = None
    ) -> CompiledPassages:
        """Export a float32 copy of the model's first layers and compile it."""
        ordered = tuple(sorted(set(layers)))
        make = functools.partial(export_in_child, "passages", host.source, ordered)
        with cached_graph(*_entry(host, "passages", ordered), make) as graph:
            run = openvino_runner(graph, PASSAGE_INPUTS, threads, precision)
        return cls(run, ordered)

    def hidden(self, ids: Sequence[int], layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """``{layer: [1, T, H]}``: the passage's states at ``layers`` (among those it was built for).

        The tokens are padded at the end to a multiple of :data:`PASSAGE_BUCKET`, which leaves
        their states as they are (attention is causal): OpenVINO keeps memory for every input
        length it meets (~1-3 MiB each, docs/benchmarks.md), and a text's last window may have
        any length up to the window's, so only a few lengths ever reach it.
        """
        padded = _padded(ids, PASSAGE_BUCKET)
        positions = np.arange(padded.shape[1], dtype=np.int64)[None, :]
        feeds = dict(zip(PASSAGE_INPUTS, (padded, positions), strict=True))
        with self._lock:
            self.calls += 1
            states = torch.from_numpy(np.asarray(self._run(feeds), dtype=np.float32))
        return {layer: states[self.layers.index(layer), : len(ids)][None] for layer in layers}

    def warm(self, window: int) -> None:
        """Run once on every padded length up to ``window`` tokens (what :meth:`hidden` may meet)."""
        for width in range(PASSAGE_BUCKET, window + PASSAGE_BUCKET, PASSAGE_BUCKET):
            self.hidden([0] * min(width, window), self.layers)


_PASSAGES: dict[tuple[str, tuple[int, ...], int, str], CompiledPassages] = {}


def shared_passages(host: ModelHost, layers: tuple[int, ...], threads: int) -> CompiledPassages:
    """One compiled passage reader per model, layers and thread count in a process (see
    :func:`shared_trunk`)."""
    key = (str(host.source), tuple(sorted(set(layers))), threads, precision_of(host))
    with _BUILT_LOCK:
        if key not in _PASSAGES:
            _PASSAGES[key] = CompiledPassages.build(host, key[1], threads, key[3])
        return _PASSAGES[key]
