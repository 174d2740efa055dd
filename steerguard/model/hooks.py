"""Removable forward hooks on decoder layers.

Decoder layers return a tensor (transformers 5) or a tuple whose first item is
the hidden state (older versions); these helpers read and replace the hidden
state in either form. Every hook is registered inside a context manager and
removed in ``finally`` so the shared model is never left modified.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

HiddenFn = Callable[[torch.Tensor], torch.Tensor | None]


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a decoder layer's output."""
    if isinstance(output, torch.Tensor):
        return output
    return output[0]  # type: ignore[no-any-return]


def with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """The layer output with its hidden state replaced, in the same structure."""
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:])


@contextlib.contextmanager
def layer_hooks(layers: nn.ModuleList, fns: Mapping[int, HiddenFn]) -> Iterator[None]:
    """Run ``fns[i](hidden)`` after layer ``i``; a returned tensor replaces the hidden state."""
    handles = []

    def make(fn: HiddenFn) -> Callable[..., Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            new = fn(hidden_of(output))
            return None if new is None else with_hidden(output, new)

        return hook

    try:
        for index, fn in fns.items():
            handles.append(layers[index].register_forward_hook(make(fn)))
        yield
    finally:
        for h in handles:
            h.remove()


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the needed layers have run."""


OutputFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]


@contextlib.contextmanager
def output_hook(module: nn.Module, fn: OutputFn) -> Iterator[None]:
    """Run ``fn(input, output)`` after ``module`` (one tensor in and out); a tensor returned replaces it."""

    def hook(_module: nn.Module, inputs: Any, output: Any) -> Any:
        return fn(inputs[0], output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
