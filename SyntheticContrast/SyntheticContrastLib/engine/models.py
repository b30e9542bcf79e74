"""Model files: safetensors weights beside a JSON model card (engine/cards.py) whose sha256 is checked before anything
loads. Pickled checkpoints are refused: they can run arbitrary code when opened."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .devices import resolve_device
from .encoding import WindowEncoding
from ..errors import ModelError
from ..fileio import atomic_path, atomic_write_text, sha256_of
from .networks import UNetGenerator3D
from .bundled import BUNDLED_MODELS_DIR, DEFAULT_MODEL_CARD  # noqa: F401  (re-exported: callers import them here)
from .cards import (CARD_FORMAT, GENERATOR_ARCHITECTURE, ModelCard, _card_file, _check_not_pickle,  # noqa: F401  (re-exported)
                    read_card)

@dataclass
class LoadedModel:
    """A generator in eval mode together with the card it came from."""

    card: ModelCard
    generator: UNetGenerator3D
    card_path: Path

    @property
    def encoding(self) -> WindowEncoding:
        return self.card.encoding


def load_model(card_path: str | Path = DEFAULT_MODEL_CARD, device: str | torch.device = "cpu") -> LoadedModel:
    """Read the card, verify the weights' sha256, refuse pickles, and build the generator in eval mode."""
    card_path = _card_file(card_path)
    card = read_card(card_path)
    weights = (card_path.parent / card.weights_file).resolve()
    if not weights.exists():
        raise ModelError(weights, f"weights file named by {card_path.name} not found")
    _check_not_pickle(weights)
    actual = sha256_of(weights)
    if actual != card.sha256:
        raise ModelError(
            weights,
            f"sha256 mismatch: card {card_path.name} says {card.sha256[:16]}..., file is {actual[:16]}...; "
            "the weights were changed, truncated or belong to another model",
        )
    try:
        config = card.generator_config()
    except ValueError as exc:
        raise ModelError(card_path, str(exc)) from exc
    _check_size_before_building(config, weights, card_path)
    generator = UNetGenerator3D(config)
    try:
        state = load_file(str(weights), device="cpu")
        generator.load_state_dict(state, strict=True)
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise ModelError(weights, f"weights do not fit the architecture in the card: {exc}") from exc
    generator.eval().to(resolve_device(device))
    return LoadedModel(card=card, generator=generator, card_path=card_path)


#: No card may describe a larger generator: the paper's has 147 million parameters, and a few billion would be a
#: card written to exhaust memory rather than a model.
MAX_GENERATOR_PARAMETERS = 2_000_000_000


def _check_size_before_building(config, weights: Path, card_path: Path) -> None:
    """The card's architecture must name the same tensors, of the same shapes, as its weights file holds, compared
    without allocating either: first the parameter counts, from the card's numbers alone (engine/planner.py) and the
    file's header, then each tensor, with the network built on the meta device. A card that claims a huge network
    beside small weights would otherwise allocate gigabytes before the mismatch shows."""
    from safetensors import safe_open

    from .planner import generator_parameters

    try:
        with safe_open(str(weights), framework="pt") as fh:
            held = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # a corrupt header
        raise ModelError(weights, f"weights header is not readable safetensors: {exc}") from exc
    count = lambda shapes: sum(int(np.prod(s)) for s in shapes.values())
    claimed = generator_parameters(config.to_dict())
    if claimed > MAX_GENERATOR_PARAMETERS:
        raise ModelError(card_path, f"the card's network would have {claimed} parameters, more than the "
                                    f"{MAX_GENERATOR_PARAMETERS} any model card may describe")
    if claimed > 2 * count(held) + 1_000_000:  # far more than the file holds: refused before the meta device's cost
        raise ModelError(weights, f"weights do not fit the architecture in the card {card_path.name}: the card's network has "
                                  f"{claimed} parameters, the file {count(held)}")
    with torch.device("meta"):
        wanted = {k: tuple(v.shape) for k, v in UNetGenerator3D(config).state_dict().items()}
    missing, unexpected = sorted(set(wanted) - set(held)), sorted(set(held) - set(wanted))
    reshaped = sorted(k for k in set(wanted) & set(held) if wanted[k] != held[k])
    if missing or unexpected or reshaped:
        parts = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for label, keys in
                 (("Missing key(s)", missing), ("unexpected key(s)", unexpected), ("other shape", reshaped)) if keys]
        raise ModelError(weights, f"weights do not fit the architecture in the card {card_path.name} ({'; '.join(parts)}): the "
                                  f"card's network has {count(wanted)} parameters, the file {count(held)}")


def save_model(generator: UNetGenerator3D, card: ModelCard, card_path: str | Path) -> Path:
    """Write weights then card, each atomically; the card records the weights' sha256."""
    card_path = Path(card_path)
    card_path.parent.mkdir(parents=True, exist_ok=True)
    weights = card_path.with_suffix(".safetensors")
    state = {k: v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"model_id": card.model_id, "format": "pt"})
    card.weights_file = weights.name
    card.sha256 = sha256_of(weights)
    card.architecture = {"name": GENERATOR_ARCHITECTURE, "parameters": generator.config.to_dict()}
    card.created = card.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(card_path, json.dumps(card.to_dict(), indent=2) + "\n")
    return card_path
