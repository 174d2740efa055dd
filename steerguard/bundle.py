"""Calibration bundle: probe weights, steering vectors, thresholds and a manifest.

Layout of a bundle directory::

    manifest.json        what was calibrated, on which model, from which data, how well
    tensors.safetensors  probe and category head, unit steering directions, residual norms

Tensors:

- ``probe.mean``/``probe.std`` ``[H]``: standardisation of the probe layer's
  last-token state. Then either (``manifest.probe.kind``)
  ``logistic``: ``probe.weight`` ``[H]``, ``probe.bias`` ``[1]``, a logistic
  unsafe probability on the standardised state; or ``mlp``:
  ``probe.hidden.weight`` ``[K, H]``, ``probe.hidden.bias`` ``[K]``, exact
  GELU, then ``probe.weight`` ``[K]``, ``probe.bias`` ``[1]`` (SafeSwitch-style
  probe).
- ``category.weight`` ``[C, H]``, ``category.bias`` ``[C]``: softmax category
  head on the same standardised state; row order = ``manifest.categories``.
- ``passage.mean``/``passage.std``/``passage.weight`` ``[2H × layers]``,
  ``passage.bias`` ``[1]`` (when ``manifest.passage`` is set): the passage
  probe, a logistic head on segment ends of long texts (the end's state and
  its segment's mean state, at each of ``manifest.passage.layers``, the
  deepest being ``manifest.passage.layer``; :mod:`steerguard.passages`); its
  bias puts its cut at the probe's threshold.
- ``passage_gate.mean``/``passage_gate.std``/``passage_gate.weight`` ``[H]``,
  ``passage_gate.bias`` ``[1]`` (when ``manifest.passage.gate_cut`` is set):
  the passage gate, a logistic head on the probe layer's last-token state of
  a candidate read as a lone user turn (harmful request or benign prose;
  :mod:`steerguard.passages`); its bias puts its cut at the probe's threshold.
- ``response.mean``/``response.std``/``response.weight`` ``[3H]``,
  ``response.bias`` ``[1]`` (when ``manifest.response`` is set): the response
  probe's compliance head, a logistic head on segment ends of an answer (the
  end's state, the mean state of the answer's recent tokens, the context's
  last state; ``[2H]``, the first two, in bundles whose
  ``manifest.response.features`` is ``FEATURES_V1``) at
  ``manifest.response.layer`` (:mod:`steerguard.responses`); and
  ``response_content.*`` the same (when ``manifest.response.content_cut`` is
  set), its content head; ``response_turns.*`` and ``response_turns_content.*``
  the same (when ``manifest.response.multi_turn`` is set), the pair that judges
  answers in conversations with earlier turns. Their biases put their cuts at
  the probe's threshold.
- ``category_content.mean``/``category_content.std`` ``[H]``,
  ``category_content.weight`` ``[C, H]``, ``category_content.bias`` ``[C]``
  (when ``manifest.category_content`` is set): the classifier's category head,
  a softmax on the mean probe-layer state over the last user turn's words
  (:mod:`steerguard.model.spans`); the last-token head above stays for the
  steer service's gate, which reads the last token only.
- ``cascade.mean``/``cascade.std``/``cascade.weight`` ``[H]``,
  ``cascade.bias`` ``[1]`` (when ``manifest.cascade`` is set): the early-exit
  probe, a logistic head on the last-token state at ``manifest.cascade.layer``;
  a prompt view scoring below ``manifest.cascade.exit_cut`` is safe there.
- ``refusal_head.a`` ``[H, r]``, ``refusal_head.b`` ``[r, V]`` (when
  ``manifest.refusal_head`` is set): SafeSwitch's refusal head, a low-rank
  delta on the LM head's logits (``h @ a @ b``) that a flagged row decodes
  with to write an informative refusal (:mod:`steerguard.refusal_head`).
- ``vector.<name>`` ``[L, H]``: unit steering direction per layer for
  ``refusal`` (SCANS/Arditi) and ``category:<name>`` (SafeSteer).
- ``norms`` ``[L]``: typical residual norm per layer (first token excluded:
  it is an attention sink with a huge norm). Strength is relative to it, so a
  strength means the same thing at every layer and on every model.
- Every ``vector.*`` is oriented so that *adding* it (sign +1) steers toward
  safety: refusal for ``refusal``, away from the category's own features for
  ``category:<name>``.
- A vector's manifest entry may carry ``prompt_gain``: the factor on its
  delta over a steered row's prompt positions (explicit or gated; generated
  tokens get the plain delta). Calibration tunes it with AUTO itself and
  writes one for ``refusal`` only. Its steering layers start at the probe
  layer, where the gate decides, so an explicit REFUSAL row and a flagged
  AUTO row are steered the same way.
- ``alt.*`` (optional, written by ``steerguard calibrate``): directions that
  were computed but not chosen (``alt.refusal_mean`` difference of means,
  ``alt.refusal_contrastive``), kept for analysis and the evaluation's
  per-layer ROC; nothing at serving time reads them.

``bundle_id`` is a content hash of the tensors and the manifest (less the id
itself), so caches keyed by it are invalidated by any recalibration.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from steerguard.errors import BundleError
from steerguard.manifest import (
    CATEGORY_PREFIX,
    FEATURES,
    FEATURES_V1,
    FORMAT_VERSION,
    REFUSAL,
    REFUSAL_HEAD,
    CascadeInfo,
    Manifest,
    PassageInfo,
    ResponseInfo,
    VectorInfo,
)
from steerguard.model.host import ModelIdentity

__all__ = [
    "CATEGORY_PREFIX",
    "DEFAULT_BUNDLE_DIR",
    "FORMAT_VERSION",
    "REFUSAL",
    "Bundle",
    "Manifest",
    "Scores",
]

MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parent / "bundles" / "default"
MAX_STRENGTH = 4.0


@dataclass(frozen=True)
class Scores:
    """Probe output for a batch: unsafe probability ``[B]`` and category probabilities ``[B, C]``."""

    unsafe: torch.Tensor
    categories: torch.Tensor


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k not in {"bundle_id"}}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def content_id(tensor_bytes: bytes, manifest: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(tensor_bytes)
    h.update(_canonical(manifest))
    return "sg-" + h.hexdigest()[:20]


def cut_shift(cut: float, threshold: float) -> float:
    """What moves a head's scores, in logits, so that its ``cut`` sits at ``threshold``: every head
    is served on the probe's scale (calibration moves a head's bias by it; a candidate's score
    is moved by it at serving)."""

    def logit(p: float) -> float:
        p = min(max(p, 1e-6), 1 - 1e-6)
        return math.log(p / (1 - p))

    return logit(threshold) - logit(cut)


class Bundle:
    """A loaded bundle. Read-only after construction; shared by all requests."""

    def __init__(self, manifest: Manifest, tensors: dict[str, torch.Tensor], path: Path | None = None):
        self.manifest = manifest
        self.tensors = {k: v.float().contiguous() for k, v in tensors.items()}
        self.path = path
        self._validate()

    # -- persistence --------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None) -> Bundle:
        folder = Path(path) if path is not None else DEFAULT_BUNDLE_DIR
        mpath, tpath = folder / MANIFEST, folder / TENSORS
        if not mpath.is_file() or not tpath.is_file():
            raise BundleError(f"{folder} is not a steerguard bundle (needs {MANIFEST} and {TENSORS})")
        try:
            raw = json.loads(mpath.read_text())
            tensors = load_file(str(tpath))
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read bundle {folder}: {exc}") from exc
        if not isinstance(raw, dict):
            raise BundleError(f"bundle {folder}: manifest is not a JSON object")
        bundle = cls(Manifest.from_dict(raw), tensors, folder)
        expected = content_id(tpath.read_bytes(), raw)
        if raw.get("bundle_id") != expected:
            raise BundleError(f"bundle {folder} is corrupt: content does not match its bundle_id")
        return bundle

    def save(self, folder: str | Path) -> str:
        """Write the bundle; returns and records its content-hash ``bundle_id``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tpath = out / TENSORS
        save_file(self.tensors, str(tpath), metadata={"format": "steerguard-bundle"})
        body = replace(self.manifest, bundle_id="").to_dict()
        self.manifest = replace(self.manifest, bundle_id=content_id(tpath.read_bytes(), body))
        (out / MANIFEST).write_text(json.dumps(self.manifest.to_dict(), indent=2, sort_keys=True) + "\n")
        self.path = out
        return self.manifest.bundle_id

    def with_manifest(self, manifest: Manifest) -> Bundle:
        """The same tensors under another manifest (e.g. another threshold); unsaved."""
        return Bundle(replace(manifest, bundle_id=""), self.tensors, self.path)

    def with_threshold(self, threshold: float) -> Bundle:
        """The same bundle judging at another cut (1.01: every prompt safe; 0: every one unsafe)."""
        return self.with_manifest(self.manifest.with_threshold(threshold))

    def _validate(self) -> None:
        if self.manifest.format_version != FORMAT_VERSION:
            raise BundleError(f"unsupported bundle format {self.manifest.format_version!r}")
        need = ["probe.mean", "probe.std", "probe.weight", "probe.bias", "norms"]
        kind = self.probe_kind
        if kind == "mlp":
            need += ["probe.hidden.weight", "probe.hidden.bias"]
        elif kind != "logistic":
            raise BundleError(f"unsupported probe kind {kind!r} (logistic or mlp)")
        if self.categories:
            need += ["category.weight", "category.bias"]
        if self.manifest.passage is not None:
            need += ["passage.mean", "passage.std", "passage.weight", "passage.bias"]
            if self.manifest.passage.gate_cut is not None:
                need += [f"passage_gate.{t}" for t in ("mean", "std", "weight", "bias")]
        if self.manifest.response is not None:
            need += [f"{h}.{t}" for h in self._response_heads() for t in ("mean", "std", "weight", "bias")]
        if self.manifest.category_content is not None:
            need += [f"category_content.{t}" for t in ("mean", "std", "weight", "bias")]
        if self.manifest.refusal_head is not None:
            need += ["refusal_head.a", "refusal_head.b"]
        if self.manifest.cascade is not None:
            need += ["cascade.mean", "cascade.std", "cascade.weight", "cascade.bias"]
            if not 0 <= self.manifest.cascade.layer < self.probe_layer:
                raise BundleError(
                    f"the cascade's layer {self.manifest.cascade.layer} is not before the probe's "
                    f"({self.probe_layer})"
                )
            if self.manifest.cascade.exit_cut > self.threshold:
                raise BundleError("the cascade's exit cut is above the probe's threshold")
        missing = [k for k in need if k not in self.tensors]
        if missing:
            raise BundleError(f"bundle lacks tensors: {', '.join(missing)}")
        self._validate_passage()
        self._validate_response()
        for name in self.vector_names:
            if f"vector.{name}" not in self.tensors:
                raise BundleError(f"bundle lacks vector {name!r}")

    def _validate_passage(self) -> None:
        """The passage head reads its layers; the gate reads the probe layer; candidates' cut is a score."""
        passage = self.manifest.passage
        if passage is None:
            return
        if passage.layers[-1] != passage.layer:
            raise BundleError(f"the passage probe's last feature layer is not its layer ({passage.layer})")
        self._validate_width("passage", "a segment end's state and its segment's mean, per layer")
        gate = self.tensors.get("passage_gate.weight") if passage.gate_cut else None
        if gate is not None and gate.numel() != self.tensors["probe.mean"].numel():
            raise BundleError("the passage gate reads one state at the probe layer; recalibrate")
        cut = passage.candidate_cut
        if cut is not None and not 0.0 < cut < 1.0:
            raise BundleError(f"the candidates' cut {cut} is not a score strictly between 0 and 1")

    def _validate_response(self) -> None:
        """The response heads read the states their manifest's ``features`` names."""
        info = self.manifest.response
        if info is None:
            return
        if info.features not in (FEATURES, FEATURES_V1):
            raise BundleError(f"unknown response features {info.features!r}; recalibrate")
        states = 2 if info.features == FEATURES_V1 else 3
        for head in self._response_heads():
            self._validate_width(head, f"{states} states per answer position", states, info)

    def _response_heads(self) -> list[str]:
        """The response heads the manifest says the bundle holds."""
        info = self.manifest.response
        if info is None:
            return []
        heads = ["response", "response_content"] if info.content_cut is not None else ["response"]
        turns = info.multi_turn or {}
        if turns:
            heads += ["response_turns"] + (["response_turns_content"] if turns.get("content_cut") else [])
        return heads

    def _validate_width(self, head: str, reads: str, states: int = 2, info: Any = None) -> None:
        """A position head reads ``states`` states side by side, per layer it reads."""
        info = info or getattr(self.manifest, head)
        if info is None:
            return
        width = states * self.tensors["probe.mean"].numel() * len(getattr(info, "layers", (info.layer,)))
        if self.tensors[f"{head}.weight"].numel() != width:
            raise BundleError(
                f"the {head} probe reads {self.tensors[f'{head}.weight'].numel()} features, not "
                f"{width} ({reads}); recalibrate with 'steerguard calibrate'"
            )

    # -- identity -------------------------------------------------------------

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest.model.to_dict()

    def verify_model(self, identity: ModelIdentity) -> None:
        """Refuse to run a bundle on a model it was not calibrated on."""
        want = self.manifest.model
        if want.sha256 != identity.sha256:
            raise BundleError(
                f"bundle {self.bundle_id} was calibrated on model {want.name!r} "
                f"(weights {want.sha256[:12]}), not on {identity.name!r} "
                f"(weights {identity.sha256[:12]}); recalibrate with 'steerguard calibrate'"
            )

    # -- probe ----------------------------------------------------------------

    @property
    def probe_layer(self) -> int:
        return self.manifest.probe.layer

    @property
    def classifier_layers(self) -> int:
        """Layers the classifier must load: through the deepest its probes read."""
        heads = [self.passage.layer if self.passage else 0, self.response.layer if self.response else 0]
        return max(self.probe_layer, *heads) + 1

    @property
    def threshold(self) -> float:
        return self.manifest.probe.threshold

    @property
    def probe_kind(self) -> str:
        return self.manifest.probe.kind

    @property
    def categories(self) -> list[str]:
        return list(self.manifest.categories)

    def score(self, states: torch.Tensor) -> Scores:
        """Probe the probe layer's last-token states ``[B, H]``."""
        t = self.tensors
        z = (states.float() - t["probe.mean"]) / t["probe.std"]
        if self.categories:
            cats = torch.softmax(z @ t["category.weight"].T + t["category.bias"], dim=-1)
        else:
            cats = torch.zeros((states.shape[0], 0))
        return Scores(self._unsafe(z), cats)

    def _unsafe(self, z: torch.Tensor) -> torch.Tensor:
        """The probe's unsafe scores ``[B]`` of standardised states ``z``."""
        t, features = self.tensors, z
        if self.probe_kind == "mlp":
            features = torch.nn.functional.gelu(z @ t["probe.hidden.weight"].T + t["probe.hidden.bias"])
        return torch.sigmoid(features @ t["probe.weight"] + t["probe.bias"])

    @property
    def passage(self) -> PassageInfo | None:
        """The passage probe's settings, when calibration fitted one (:mod:`steerguard.passages`)."""
        return self.manifest.passage

    def passage_score(self, states: torch.Tensor) -> torch.Tensor:
        """Unsafe scores ``[N]`` of segment ends read up to the passage layer, on the probe's scale.

        ``states``: ``[N, 2H × layers]``, per layer of ``passage.layers`` each
        end's state then its segment's mean (:func:`steerguard.passages.passage_features`).
        """
        return self._position_head("passage", states)

    def passage_gate_score(self, states: torch.Tensor) -> torch.Tensor:
        """The passage gate's scores ``[N]`` of candidates' last-token states ``[N, H]`` at the probe
        layer, on the probe's scale (a candidate is unsafe where this and the probe both reach the cut)."""
        return self._position_head("passage_gate", states)

    def candidate_score(self, states: torch.Tensor) -> torch.Tensor:
        """Scores ``[N]`` of passage candidates' last-token states ``[N, H]`` at the probe layer.

        The lower of the probe's and the gate's, moved (in logits) so that the
        candidates' own cut, ``passage.candidate_cut``, sits at the threshold: a
        document offers several candidates, each a fragment read out of its
        context, so each must clear a stricter cut than a lone turn
        (docs/calibration.md).
        """
        t = self.tensors
        probe = self._unsafe((states.float() - t["probe.mean"]) / t["probe.std"])
        both = torch.minimum(probe, self.passage_gate_score(states))
        cut = None if self.passage is None else self.passage.candidate_cut
        if cut is None:
            return both
        shift = cut_shift(cut, self.threshold)
        return torch.sigmoid(torch.logit(both.double(), 1e-12) + shift).to(both.dtype)

    @property
    def response(self) -> ResponseInfo | None:
        """The response probe's settings, when calibration fitted one (:mod:`steerguard.responses`)."""
        return self.manifest.response

    def response_score(
        self, states: torch.Tensor, *, content_only: bool = False, multi_turn: bool = False
    ) -> torch.Tensor:
        """Unsafe scores ``[N]`` of answer segment ends at the response layer, on the probe's scale.

        ``states``: ``[N, 3H]`` as :func:`steerguard.responses.answer_features`
        reads them. The score is the higher of the compliance head's
        (``response.*``) and the content head's (``response_content.*``, when
        fitted); each reads the leading columns it was fitted on, so a bundle
        fitted on the first two states is served as it was. ``multi_turn``:
        the answer replies in a conversation with earlier turns, judged by the
        heads fitted for those (``response_turns.*``) where the bundle has
        them. ``content_only``: the content head's alone, where the bundle has
        one (what :mod:`steerguard.answer_judge` reads).
        """
        base = "response_turns" if multi_turn and "response_turns.weight" in self.tensors else "response"
        heads = [h for h in (base, f"{base}_content") if f"{h}.weight" in self.tensors]
        if content_only and f"{base}_content" in heads:
            heads = [f"{base}_content"]
        scores = [self._position_head(h, states[:, : self.tensors[f"{h}.mean"].shape[0]]) for h in heads]
        return torch.stack(scores).amax(dim=0)

    @property
    def reads_content(self) -> bool:
        """True when the classifier's categories come from the content head (``category_content.*``)."""
        return self.manifest.category_content is not None and bool(self.categories)

    @property
    def category_unsure_below(self) -> float:
        """The content head's abstain cut on its top probability (0: never unsure;
        steerguard.calibration.categories.unsure_cut)."""
        if not self.reads_content:
            return 0.0
        return float((self.manifest.category_content or {}).get("unsure_below", 0.0))

    def content_categories(self, means: torch.Tensor) -> torch.Tensor:
        """Category probabilities ``[B, C]`` from mean states over the last user turn ``[B, H]``."""
        t = self.tensors
        z = (means.float() - t["category_content.mean"]) / t["category_content.std"]
        return torch.softmax(z @ t["category_content.weight"].T + t["category_content.bias"], dim=-1)

    @property
    def cascade(self) -> CascadeInfo | None:
        """The early exit's settings, when calibration fitted one (:class:`CascadeInfo`)."""
        return self.manifest.cascade

    def early_score(self, states: torch.Tensor) -> torch.Tensor:
        """The early probe's unsafe scores ``[B]`` of last-token states ``[B, H]`` at the cascade's layer."""
        t = self.tensors
        z = (states.float() - t["cascade.mean"]) / t["cascade.std"]
        return torch.sigmoid(z @ t["cascade.weight"] + t["cascade.bias"])

    def cascade_score(
        self, early_states: torch.Tensor, probe_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unsafe scores ``[B]`` as the served cascade gives them, and which rows exit early.

        A row whose early score is under the exit cut takes that score (safe);
        the others take the probe's. Without a cascade every row takes the
        probe's score. Evaluation reads both layers of every prompt; serving
        stops a pass early when all its rows exit, with the same rule.
        """
        full = self.score(probe_states).unsafe
        if self.cascade is None:
            return full, torch.zeros(full.shape[0], dtype=torch.bool)
        early = self.early_score(early_states)
        exits = self.exits_early(early)
        return torch.where(exits, early, full), exits

    def exits_early(self, early: torch.Tensor) -> torch.Tensor:
        """Which early scores leave at the cascade's layer (judged safe there)."""
        assert self.cascade is not None, "only a bundle with a cascade has an early exit"
        return early < self.cascade.exit_cut

    def _position_head(self, head: str, states: torch.Tensor) -> torch.Tensor:
        t = self.tensors
        z = (states.float() - t[f"{head}.mean"]) / t[f"{head}.std"]
        return torch.sigmoid(z @ t[f"{head}.weight"] + t[f"{head}.bias"])

    # -- steering ----------------------------------------------------------------

    @property
    def vector_names(self) -> list[str]:
        return list(self.manifest.vectors)

    def vector_layers(self, name: str) -> list[int]:
        return list(self.manifest.vector(name).layers)

    def default_strength(self, name: str) -> float:
        return float(self.manifest.vector(name).strength)

    def prompt_gain(self, name: str) -> float:
        """Factor on vector ``name``'s delta over the prompt's positions (1 when not calibrated)."""
        gain = self.manifest.vector(name).prompt_gain
        return 1.0 if gain is None else float(gain)

    def with_vector(self, name: str, info: VectorInfo, direction: torch.Tensor) -> Bundle:
        """A copy whose vector ``name`` is ``direction`` [L, H] steered as ``info`` says (unsaved)."""
        tensors = {**self.tensors, f"vector.{name}": direction}
        return Bundle(replace(self.manifest.with_vector(name, info), bundle_id=""), tensors, self.path)

    def deltas(self, name: str, strength: float | None = None, sign: float = 1.0) -> dict[int, torch.Tensor]:
        """{layer: delta [H]} to add for vector ``name`` at ``strength`` (relative to residual norm)."""
        s = self.default_strength(name) if strength is None or strength == 0 else float(strength)
        directions = self.tensors[f"vector.{name}"]
        norms = self.tensors["norms"]
        return {layer: sign * s * norms[layer] * directions[layer] for layer in self.vector_layers(name)}

    def _policy_choice(self, category: str) -> str:
        policy = self.manifest.policy
        return str(policy.per_category.get(category, policy.default))

    def policy_vector(self, category: str) -> str:
        """Vector AUTO adds to an unsafe prompt of ``category`` (refusal unless the policy names one)."""
        choice = self._policy_choice(category)
        if choice == "category":
            choice = CATEGORY_PREFIX + category
        return choice if choice in self.vector_names else REFUSAL

    def unproven_category_answers(self) -> list[str]:
        """Categories the policy answers with category vectors that calibration found no safer than none.

        Calibration's strength search (``category_search``) records whether
        any strength made judged answers pass more often than unsteered ones
        (:mod:`steerguard.calibration.category_tune`); where none did, a
        policy that names ``category`` gives flagged requests answers about
        as unsafe as unsteered ones, which the steer service says at start-up.
        """
        search = self.manifest.category_search
        if not search or search.get("beats_unsteered", True):
            return []
        return [c for c in self.categories if self.policy_vector(c) == CATEGORY_PREFIX + c]

    def policy_names_head(self, category: str) -> bool:
        """Whether the policy answers a flagged prompt of ``category`` with the refusal head."""
        return self._policy_choice(category) == REFUSAL_HEAD and self.has_refusal_head

    def with_head_answered_by_vector(self) -> Bundle:
        """This bundle with every policy entry that names the refusal head answered by the refusal vector.

        Why: an engine that cannot decode with the head (vLLM computes logits
        outside the layers its hooks reach) still serves a bundle whose policy
        names it, with the steering the head was measured against; each
        answer's applied steering says ``refusal``.
        """
        policy = self.manifest.policy
        if not policy.names(REFUSAL_HEAD):
            return self
        return self.with_manifest(replace(self.manifest, policy=policy.replacing(REFUSAL_HEAD, REFUSAL)))

    @property
    def has_refusal_head(self) -> bool:
        return self.manifest.refusal_head is not None

    def refusal_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The refusal head's low-rank factors ``(a [H, r], b [r, V])``."""
        if not self.has_refusal_head:
            raise BundleError("this bundle has no refusal head")
        return self.tensors["refusal_head.a"], self.tensors["refusal_head.b"]

    def steer_layers(self) -> list[int]:
        """Every layer any vector steers (the hooks a gated batch may need)."""
        return sorted({layer for name in self.vector_names for layer in self.vector_layers(name)})

    def info(self) -> dict[str, Any]:
        """Summary for DescribeBundle and logs."""
        return {
            "bundle_id": self.bundle_id,
            "model": self.model,
            "categories": self.categories,
            "probe_layer": self.probe_layer,
            "threshold": self.threshold,
            "steer_layers": self.vector_layers(REFUSAL) if REFUSAL in self.vector_names else [],
            "default_strength": self.default_strength(REFUSAL) if REFUSAL in self.vector_names else 0.0,
            "created_at": self.manifest.created_at,
        }
