"""The model and bundle a classifier benchmark runs on: the embedded defaults, or a tiny random pair."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from steerguard.bundle import Bundle
from steerguard.model.host import ModelHost


def load(tiny: bool, **heads: Any) -> tuple[ModelHost, Bundle]:
    """SmolLM2 with the default bundle (only the layers the classifier reads), or with ``tiny`` a
    tiny random Llama and a random bundle with the ``heads`` given (``make_random_bundle`` options)."""
    if not tiny:
        bundle = Bundle.load()
        return ModelHost.load(None, max_layers=bundle.classifier_layers), bundle
    from devstack.models import make_random_bundle, make_tiny_llama

    folder = Path(tempfile.mkdtemp())
    host = ModelHost.load(make_tiny_llama(folder / "model"))
    return host, make_random_bundle(host, folder / "bundle", **heads)
