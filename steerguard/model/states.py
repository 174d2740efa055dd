"""Last-token states of many conversations, memoised on disk: calibration's and the evaluation's input.

Recalibrating after a change of thresholds, weights or a few added prompts
then costs only the new prompts' forward passes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from steerguard.model.activations import collect_states
from steerguard.model.chat import Conversation
from steerguard.model.host import ModelHost
from steerguard.model.paths import cache_dir


def activation_cache_path(host: ModelHost, layers: Sequence[int] | None = None) -> Path:
    tag = f"L{host.loaded_layers}" if layers is None else "layers-" + "-".join(str(i) for i in layers)
    return cache_dir() / "activations" / f"{host.identity.sha256[:16]}-{tag}.pt"


def cached_states(
    host: ModelHost,
    convs: Sequence[Conversation],
    *,
    batch_size: int,
    progress: bool,
    use_cache: bool = True,
    layers: Sequence[int] | None = None,
    desc: str = "calibration states",
) -> torch.Tensor:
    """Last-token states ``[N, layers, H]`` (every layer by default), memoised on disk per conversation.

    Recalibrating after a change of thresholds, weights or a few added prompts
    then costs only the new prompts' forward passes. A subset of layers (the
    mining pool is scored at the probe layer only) runs with early exit and
    has a memo of its own.
    """
    wanted = list(range(host.loaded_layers)) if layers is None else sorted(set(layers))
    path = activation_cache_path(host, None if layers is None else wanted)
    memo: dict[str, torch.Tensor] = {}
    if use_cache and path.is_file():
        try:
            memo = torch.load(path, weights_only=True)
        except Exception:  # a corrupt cache is only a slower run
            memo = {}
    keys = [c.digest() for c in convs]
    missing = sorted({k: i for i, k in enumerate(keys) if k not in memo}.values())
    if missing:
        found = collect_states(
            host,
            [convs[i] for i in missing],
            wanted,
            batch_size=batch_size,
            progress=progress,
            desc=desc,
        )
        for j, i in enumerate(missing):
            memo[keys[i]] = torch.stack([found[layer][j] for layer in wanted]).clone()
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(memo, tmp)
            tmp.replace(path)
    return torch.stack([memo[k] for k in keys]).float()
