"""The compiled trunk with int8 weights in three of its seven projections (``--backend onnxruntime-int8``).

Why: on a CPU without native bf16 a cache miss is ~75% matrix products, all
in float32, and ONNX Runtime's int8 products (weights int8 per output
channel, each call's activations quantised to uint8 per tensor) run them
about twice as fast. Which products may be int8 was measured on calibration
prompts (docs/benchmarks.md): SmolLM2's residual stream carries a few huge
outlier channels, and where they reach a product's input, one scale for the
whole tensor wipes out the small channels the probe reads. Quantising every
projection flipped 19 of 60 verdicts, q/k/v (read from the RMS-normalised
stream, whose gains bring the outliers back) 10 of 60 with gate/up, down
(read from the MLP's product) 27-33 of 120 even in late layers alone.
``o_proj``, ``gate_proj`` and ``up_proj`` are 59% of the products' work.

The weights have 7 bits (``reduce_range``). Without VNNI (AVX2 alone, or
AVX-512 without VNNI), ONNX Runtime multiplies uint8 by int8 with an
instruction that adds each pair in 16 bits and saturates: 2 x 255 x 127
overflows, 2 x 255 x 64 does not. With 8-bit weights on such a CPU, 35 of
1,011 held-out verdicts changed (3.5%); with VNNI the same graph changed 7
of 1,901 calibration verdicts. With 7 bits the integers are exact on every
x86 CPU: 12 of 1,901 calibration verdicts changed, 12 of 1,011 held out
(1.2%; target at most 2%; 16 on an AVX2-only CPU, whose float kernels
around the products differ), and ``--backend auto`` takes this engine on CPUs
without native bf16 (:func:`classifier_service.accelerated.auto_engine`).

The quantised graph is made once from the float32 trunk's graph, in a
process of its own (``python -m classifier_service.quantized SRC FOLDER``:
the quantiser holds the whole model in memory while it works), and kept in
the graph cache beside it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

from classifier_service.graph_cache import GRAPH, made_in_child

# The module paths (as the exporter names them) whose products run in int8; see the docstring.
INT8_PROJECTIONS = ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj")


def _scope(node: Any) -> str:
    """The module a node was exported from (its innermost name scope but the op's own), or ''."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            return str(scopes[-2]) if len(scopes) >= 2 else ""
    return ""


def int8_nodes(model: Any, projections: tuple[str, ...] = INT8_PROJECTIONS) -> list[str]:
    """The names of ``model``'s products with a constant weight exported from one of ``projections``."""
    weights = {init.name for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul"
        and len(node.input) == 2
        and node.input[1] in weights
        and _scope(node).endswith(projections)
    ]


def quantize(source: Path, folder: Path) -> Path:
    """``folder / GRAPH``: the graph at ``source`` with :data:`INT8_PROJECTIONS` in int8 (in this process)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = int8_nodes(onnx.load(str(source), load_external_data=False))
    if not nodes:
        raise ValueError("the trunk's graph names none of the projections to quantise")
    out = folder / GRAPH
    quantize_dynamic(
        str(source),
        str(out),
        weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes,
        per_channel=True,
        reduce_range=True,  # 7-bit weights: no saturation on CPUs without VNNI (module docstring)
        use_external_data_format=True,
        extra_options={"MatMulConstBOnly": True},
    )
    return out


def quantize_in_child(source: Path, folder: Path) -> Path:
    """:func:`quantize` in a process of its own (:func:`~classifier_service.graph_cache.made_in_child`)."""
    args = [str(source), str(folder)]
    return made_in_child("classifier_service.quantized", args, folder, "quantising the trunk's graph")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m classifier_service.quantized SOURCE_GRAPH FOLDER", file=sys.stderr)
        return 2
    quantize(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
