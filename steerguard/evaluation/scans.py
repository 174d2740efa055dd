"""SCANS measured: refusal rates on XSTest's held-out types under ``none``, ``auto`` and ``scans``.

SCANS subtracts the refusal vector from prompts the probe judges safe, to
undo over-refusal of benign prompts that sound harmful (XSTest's safe
types). An aligned model over-refuses them; SmolLM2 is not aligned, so what
this measures is what each mode does to the prompts as this guard serves
them: how many safe ones end refused (``auto`` and ``scans`` refuse only the
flagged ones, ``scans`` also pushes the others away from refusing), and how
many unsafe ones end refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from steerguard import judge
from steerguard.bundle import Bundle
from steerguard.evaluation.config import EvalConfig
from steerguard.evaluation.generation import generation_kwargs
from steerguard.evaluation.scoring import r
from steerguard.evaluation.stats import proportion
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost
from steerguard.offline import generate_many
from steerguard.plan import Mode, SteeringRequest

MODES = (Mode.NONE, Mode.AUTO, Mode.SCANS)


def scans_section(host: ModelHost, bundle: Bundle, held: Any, cfg: EvalConfig) -> dict[str, Any]:
    """Strict-judge refusal rates of XSTest's held-out safe and unsafe prompts under each mode."""
    safe = [e for e in held.xstest if e.label == 0]
    unsafe = [e for e in held.xstest if e.label == 1]
    convs = [normalise_request(e.prompt) for e in safe + unsafe]
    kw = generation_kwargs(cfg)
    out: dict[str, Any] = {"safe_prompts": len(safe), "unsafe_prompts": len(unsafe)}
    for mode in MODES:
        gens = generate_many(host, bundle, convs, [SteeringRequest(mode)] * len(convs), desc=mode.value, **kw)
        refused = [judge.is_refusal(g.text) for g in gens]
        out[mode.value] = {
            "safe_refused": r(float(np.mean(refused[: len(safe)]))) if safe else None,
            "safe_refused_count": proportion(refused[: len(safe)]),
            "unsafe_refused": r(float(np.mean(refused[len(safe) :]))) if unsafe else None,
            "unsafe_refused_count": proportion(refused[len(safe) :]),
        }
    return out
