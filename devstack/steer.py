"""Helpers for the steer service's tests and benchmark.

The shared tiny random Llama (``devstack.models.make_tiny_llama``) is so
flat that it emits the same token for every prompt, which would make "same
tokens" assertions vacuous. :func:`liven` scales its weights so outputs depend
on the prompt and on steering, while staying tiny and fast.
"""

from __future__ import annotations

import torch

from steerguard.bundle import Bundle
from steerguard.model.host import ModelHost


def liven(host: ModelHost, scale: float = 6.0) -> ModelHost:
    """Scale ``host``'s non-norm weights in place (use a host of its own, not a shared one)."""
    with torch.no_grad():
        for name, param in host.model.named_parameters():
            if "norm" not in name:
                param.mul_(scale)
    return host


def with_threshold(bundle: Bundle, threshold: float) -> Bundle:
    """The same bundle judging at another threshold (1.01: every prompt safe; 0: every one unsafe)."""
    return bundle.with_threshold(threshold)
