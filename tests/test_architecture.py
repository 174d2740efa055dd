"""The layout's rules, checked on the source: no import cycles, no fixtures in the product,
short functions, one default per setting, and a light base install.

Imports are read with ``ast`` from every file, including those made inside
functions (a cycle hidden behind a function-level import is still a cycle).
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("steerguard", "classifier_service", "steer_service", "sidecar")
DEV_ONLY = ("devstack", "tests", "bench")
MAX_FUNCTION_LINES = 80


def _modules(roots: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, anywhere in the file (relative imports resolved)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _graph(roots: tuple[str, ...]) -> dict[str, set[str]]:
    mods = _modules(roots)

    def owner(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = {owner(t) for t in _imports(name, path)}
        graph[name] = {d for d in deps if d is not None and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_sees_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from steerguard.data import loaders\n")
    assert "steerguard.data.loaders" in _imports("steerguard.x", source)
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph(PRODUCT + ("devstack",)))
    assert not cycles, f"import cycles (function-level imports included): {cycles}"


def test_no_product_module_imports_a_dev_tool() -> None:
    graph = _graph(PRODUCT + DEV_ONLY)
    bad = {
        f"{m} -> {d}"
        for m, deps in graph.items()
        if m.split(".")[0] in PRODUCT
        for d in deps
        if d.split(".")[0] in DEV_ONLY
    }
    assert not bad, f"product modules importing dev tools or tests: {sorted(bad)}"


def test_the_sidecar_never_imports_the_model_side() -> None:
    """The sidecar is the light part: no torch, and none of the model-side packages."""
    graph = _graph(PRODUCT)
    heavy = ("steerguard.model", "steerguard.calibration", "steerguard.evaluation", "classifier_service.core")
    bad = {
        f"{m} -> {d}"
        for m, deps in graph.items()
        if m.startswith("sidecar")
        for d in deps
        if d.startswith(heavy)
    }
    assert not bad, sorted(bad)


def test_functions_fit_on_a_screen() -> None:
    long = []
    for root in PRODUCT + ("devstack", "scripts"):
        for path in (REPO / root).rglob("*.py"):
            if "_pb2" in path.name:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _defaults(parser: argparse.ArgumentParser) -> dict[str, object]:
    return {a.dest: a.default for a in parser._actions if a.dest != "help"}


def _subparser(command: str) -> argparse.ArgumentParser:
    from steerguard.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def test_calibrate_flags_default_to_the_calibration_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("STEERGUARD_")]:
        monkeypatch.delenv(key)
    from steerguard.calibration.config import DEFAULTS

    flags = _defaults(_subparser("calibrate"))
    same_name = {
        "seed": "seed",
        "benign": "benign_calibration",
        "probe": "probe_kind",
        "mine_negatives": "mine_negatives",
        "mine_pool": "mine_pool",
        "target_refusal": "target_refusal",
        "max_ppl_ratio": "max_ppl_ratio",
        "batch_size": "batch_size",
    }
    for flag, field in same_name.items():
        assert flags[flag] == getattr(DEFAULTS, field), f"--{flag} vs CalibrationConfig.{field}"
    assert flags["no_borderline"] is not DEFAULTS.builtin_borderline
    assert flags["include_copyright"] is DEFAULTS.include_copyright
    assert flags["no_cache"] is not DEFAULTS.use_cache
    from steerguard.data import system_prompts

    assert system_prompts.resolve(str(flags["system_prompts"])) == DEFAULTS.system_prompts


def test_eval_flags_default_to_the_eval_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("STEERGUARD_")]:
        monkeypatch.delenv(key)
    from steerguard.evaluation.config import DEFAULTS

    flags = _defaults(_subparser("eval"))
    for flag in ("gen_harmful", "gen_benign", "max_new_tokens", "batch_size"):
        assert flags[flag] == getattr(DEFAULTS, flag), flag
    assert flags["no_self_verdict"] is not DEFAULTS.self_verdict


def test_fit_functions_default_to_the_config() -> None:
    """Every numeric default of the probe fits is read from the config, not restated."""
    import inspect

    from steerguard.calibration import probe, selection, threshold
    from steerguard.calibration.config import DEFAULTS, FIT

    stated = {getattr(DEFAULTS, f.name) for f in fields(DEFAULTS)} | {
        getattr(FIT, f.name) for f in fields(FIT)
    }
    for module in (probe, selection, threshold):
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ != module.__name__:
                continue
            for p in inspect.signature(fn).parameters.values():
                if isinstance(p.default, float):
                    assert p.default in stated, (
                        f"{module.__name__}.{name}({p.name}={p.default}) restates a default"
                    )


LIGHT_CHECK = textwrap.dedent(
    """
    import sys
    heavy = ("torch", "transformers", "numpy", "sklearn", "safetensors", "gguf", "accelerate", "matplotlib")
    for name in heavy:
        sys.modules[name] = None  # importing it now raises ImportError
    from steerguard.cli import main
    try:
        main(["serve", "sidecar", "--help"])
    except SystemExit as exc:
        assert exc.code == 0, exc.code
    import sidecar.app, sidecar.proxy, steerguard.grpc_common.client  # noqa: F401
    print("light ok")
    """
)


def test_the_sidecar_runs_without_the_model_extra() -> None:
    """``steerguard serve sidecar`` and the sidecar's modules import with torch & co. unavailable."""
    done = subprocess.run(
        [sys.executable, "-c", LIGHT_CHECK],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "light ok" in done.stdout and "--upstream" in done.stdout


def test_a_model_command_without_the_model_extra_says_which_extra() -> None:
    code = LIGHT_CHECK.split("from steerguard.cli import main")[0] + textwrap.dedent(
        """
        from steerguard.cli import main
        sys.exit(main(["classify", "--input", "-", "--output", "-"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "pip install 'steerguard[model]'" in done.stderr


def test_service_flags_default_to_the_service_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("STEERGUARD_")]:
        monkeypatch.delenv(key)
    from classifier_service.config import CoreConfig
    from steer_service.config import SteerConfig

    serve = _subparser("serve")
    sub = next(a for a in serve._actions if isinstance(a, argparse._SubParsersAction))
    classifier = _defaults(sub.choices["classifier"])
    for f in (
        "max_prompt_tokens",
        "max_batch_size",
        "schedule",
        "max_batch_wait_ms",
        "batch_wait_fraction",
        "max_queue",
        "max_step_tokens",
        "max_queue_delay_ms",
        "max_queue_delay_steps",
    ):
        assert classifier[f] == getattr(CoreConfig(), f), f
    assert classifier["cache_prefix"] == CoreConfig().cache_prefix
    steer = _defaults(sub.choices["steer"])
    for f in ("max_prompt_tokens", "max_batch_size", "max_new_tokens_cap", "max_queue"):
        assert steer[f] == getattr(SteerConfig(), f), f
