"""Read the residual stream at the last prompt token, running only the layers needed.

"Layer i" means the output of decoder layer i (0-based): the residual stream
after i+1 blocks. A hook on the deepest requested layer raises
:class:`StopForward`, so deeper layers, the final norm and the LM head never
run (early exit). Batches are left-padded, so the last prompt token is at
position -1 of every row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from steerguard.model.chat import Conversation
from steerguard.model.hooks import StopForward, layer_hooks
from steerguard.model.host import Batch, ModelHost
from steerguard.model.spans import Span, TurnMarkers, last_turn_content

Reducer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LayerStates:
    """A pass's last-token states per layer and, when asked, the deepest layer's span means."""

    states: dict[int, torch.Tensor]
    content: torch.Tensor | None = None


# Called with (layer, what was kept of it) after each requested layer; True ends the pass there.
StopRule = Callable[[int, torch.Tensor], bool]


def _last_token(hidden: torch.Tensor) -> torch.Tensor:
    return hidden[:, -1, :]


@torch.inference_mode()
def reduced_states(
    host: ModelHost,
    batch: Batch,
    layers: Iterable[int],
    reduce: Reducer = _last_token,
    stop: StopRule | None = None,
) -> dict[int, torch.Tensor]:
    """{layer: reduce(hidden)} as float32 on the CPU, stopping after the deepest layer.

    ``reduce`` maps a layer's ``[batch, tokens, hidden]`` output to what is
    kept (the last token for the probe; a mean over a suffix for calibration's
    contrastive vectors). ``stop`` may end the pass sooner (the classifier's
    early exit): deeper layers are then missing from the result.
    """
    wanted = sorted(set(layers))
    if not wanted:
        raise ValueError("no layers requested")
    if wanted[-1] >= host.loaded_layers or wanted[0] < 0:
        raise ValueError(f"layers must be in 0..{host.loaded_layers - 1}")
    found: dict[int, torch.Tensor] = {}
    deepest = wanted[-1]

    def reader(index: int) -> Callable[[torch.Tensor], None]:
        def read(hidden: torch.Tensor) -> None:
            found[index] = reduce(hidden.detach().float()).cpu().clone()
            if index == deepest or (stop is not None and stop(index, found[index])):
                raise StopForward

        return read

    with layer_hooks(host.layers, {i: reader(i) for i in wanted}), contextlib.suppress(StopForward):
        host.model.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
    return found


def last_token_states(
    host: ModelHost, batch: Batch, layers: Iterable[int], stop: StopRule | None = None
) -> dict[int, torch.Tensor]:
    """{layer: [batch, hidden]} float32 states at the last token, with early exit (and ``stop``)."""
    return reduced_states(host, batch, layers, stop=stop)


def states_with_spans(
    host: ModelHost, batch: Batch, layers: Iterable[int], spans: Sequence[Span], stop: StopRule | None = None
) -> LayerStates:
    """Last-token states of ``layers`` and the deepest layer's mean over each row's span.

    ``spans`` are positions in each row's own tokens (the batch is left-padded).
    """
    wanted = sorted(set(layers))
    width, size = batch.input_ids.shape[1], host.identity.hidden_size
    lengths = batch.attention_mask.sum(1).tolist()
    shifted = [(s + width - n, max(e, s + 1) + width - n) for (s, e), n in zip(spans, lengths, strict=True)]

    def reduce(hidden: torch.Tensor) -> torch.Tensor:
        means = torch.stack([hidden[r, s:e].mean(0) for r, (s, e) in enumerate(shifted)])
        return torch.cat([hidden[:, -1, :], means], dim=-1)

    def halt(layer: int, kept: torch.Tensor) -> bool:
        return stop is not None and stop(layer, kept[:, :size])

    found = reduced_states(host, batch, wanted, reduce, stop=halt)
    deepest = found.get(wanted[-1])
    return LayerStates(
        {layer: kept[:, :size] for layer, kept in found.items()},
        None if deepest is None else deepest[:, size:],
    )


def collect_states(
    host: ModelHost,
    convs: Sequence[Conversation],
    layers: Iterable[int],
    *,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "activations",
) -> dict[int, torch.Tensor]:
    """Last-token states of many conversations, batched by similar length."""
    wanted = sorted(set(layers))
    order = sorted(range(len(convs)), key=lambda i: len(host.token_ids(convs[i])))
    out = {layer: torch.empty((len(convs), host.identity.hidden_size)) for layer in wanted}
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch")  # type: ignore[assignment]
    for start in starts:
        idx = order[start : start + batch_size]
        states = last_token_states(host, host.encode([convs[i] for i in idx]), wanted)
        for layer in wanted:
            out[layer][idx] = states[layer]
    return out


def batch_spans(batch: Batch, markers: TurnMarkers | None) -> list[Span]:
    """Each row's last-user-turn span, in the row's own tokens (padding removed)."""
    return [
        last_turn_content(row[mask.bool()].tolist(), markers)
        for row, mask in zip(batch.input_ids, batch.attention_mask, strict=True)
    ]


def content_means(
    host: ModelHost, convs: Sequence[Conversation], layer: int, *, batch_size: int = 16
) -> torch.Tensor:
    """``[N, H]`` mean states of ``layer`` over each conversation's last user turn's words.

    The span comes from :func:`steerguard.model.spans.last_turn_content`; the
    classifier's category head reads this (see that module for why).
    """
    markers = TurnMarkers.for_tokenizer(host.tokenizer)
    out = torch.empty((len(convs), host.identity.hidden_size))
    for start in range(0, len(convs), batch_size):
        batch = host.encode(convs[start : start + batch_size])
        found = states_with_spans(host, batch, [layer], batch_spans(batch, markers))
        assert found.content is not None, "the deepest layer's span means are always read"
        out[start : start + batch.input_ids.shape[0]] = found.content
    return out
