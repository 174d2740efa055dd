"""``--backend onnxruntime-int8``: which products of the trunk's graph run in int8, and that they do.

The int8 graph is made from the float32 trunk's graph by ONNX Runtime's
quantiser, in a process of its own, and kept in the graph cache; only the
products of ``o_proj``, ``gate_proj`` and ``up_proj`` may change (the others
flipped calibration verdicts, classifier_service/quantized.py).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from classifier_service import accelerated
from classifier_service.quantized import INT8_PROJECTIONS, _scope, int8_nodes, quantize_in_child
from steerguard.bundle import Bundle
from steerguard.model.host import ModelHost


@pytest.fixture(scope="module")
def float_graph(tiny_model_dir: Path, tiny_bundle: Bundle) -> onnx.ModelProto:
    host = ModelHost.load(tiny_model_dir, max_layers=tiny_bundle.probe_layer + 1)
    with accelerated.exported(host, tiny_bundle.probe_layer) as (graph, _):
        return onnx.load(str(graph), load_external_data=False)


def test_only_the_three_projections_of_every_layer_are_picked(
    float_graph: onnx.ModelProto, tiny_bundle: Bundle
) -> None:
    picked = set(int8_nodes(float_graph))
    layers = tiny_bundle.probe_layer + 1
    scopes = Counter(_scope(n).split(".", 2)[-1] for n in float_graph.graph.node if n.name in picked)
    assert scopes == dict.fromkeys(INT8_PROJECTIONS, layers)
    products = [n for n in float_graph.graph.node if n.op_type == "MatMul"]
    left = {_scope(n).split(".", 2)[-1] for n in products if n.name not in picked}
    assert {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj"} <= left


def test_the_quantised_graph_runs_those_products_in_int8(
    tiny_model_dir: Path, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    host = ModelHost.load(tiny_model_dir, max_layers=tiny_bundle.probe_layer + 1)
    with accelerated.exported(host, tiny_bundle.probe_layer) as (graph, _):
        out = quantize_in_child(graph, tmp_path)
    ops = Counter(n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node)
    layers = tiny_bundle.probe_layer + 1
    int8_ops = ops["DynamicQuantizeMatMul"] + ops["MatMulInteger"]
    assert int8_ops == 3 * layers
    assert ops["MatMul"] >= 4 * layers  # q, k, v, down and attention's own products stay float


def test_the_int8_weights_have_seven_bits_so_no_cpu_saturates_them(
    tiny_model_dir: Path, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    """Without VNNI, ONNX Runtime's u8 x s8 products add pairs in 16 bits: 2 x 255 x 127 overflows,
    2 x 255 x 64 does not, so 7-bit weights give the same integers on every x86 CPU."""
    host = ModelHost.load(tiny_model_dir, max_layers=tiny_bundle.probe_layer + 1)
    with accelerated.exported(host, tiny_bundle.probe_layer) as (graph, _):
        out = quantize_in_child(graph, tmp_path)
    model = onnx.load(str(out))
    int8 = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    weights = [w for w in int8 if w.ndim == 2]  # the rest are zero points
    assert len(weights) == 3 * (tiny_bundle.probe_layer + 1)
    assert all(int(abs(w.astype(int)).max()) <= 64 for w in weights)
    assert max(int(abs(w.astype(int)).max()) for w in weights) >= 60  # the range is used, not collapsed


def test_a_failed_quantisation_names_itself(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="quantising the trunk's graph failed"):
        quantize_in_child(tmp_path / "missing.onnx", tmp_path)
