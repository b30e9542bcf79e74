"""Model files: safetensors weights plus a JSON model card whose sha256 is checked before anything loads.

Pickled checkpoints are refused: they can run arbitrary code when opened.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .devices import resolve_device
from .encoding import WindowEncoding
from ..errors import ModelError
from ..fileio import atomic_path, atomic_write_text, sha256_of
from .networks import GENERATOR_ARCHITECTURE, GeneratorConfig, UNetGenerator3D
from .bundled import BUNDLED_MODELS_DIR, DEFAULT_MODEL_CARD  # noqa: F401  (re-exported: callers import them here)

CARD_FORMAT = "synthetic-contrast-model-card/1"
_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".h5"}


@dataclass
class ModelCard:
    """Everything needed to rebuild, trust and use a generator, stored next to its weights."""

    model_id: str
    architecture: dict
    encoding: WindowEncoding
    window: dict  # {"z": 16, "y": 512, "x": 512}
    default_stride: int
    intended_use: str
    training_data: str
    weights_file: str
    sha256: str = ""
    training: dict = field(default_factory=dict)
    created: str = ""
    input_statistics: dict = field(default_factory=dict)  # what the training inputs looked like (ood.py)
    enhancement_statistics: dict = field(default_factory=dict)  # what the training targets' enhancement was (plausibility.py)

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig.from_dict(self.architecture["parameters"])

    def to_dict(self) -> dict:
        return {
            "format": CARD_FORMAT,
            "model_id": self.model_id,
            "architecture": self.architecture,
            "input_encoding": self.encoding.to_dict(),
            "output_mapping": {
                "channel": self.encoding.output_channel,
                "to": "HU",
                "range_hu": list(self.encoding.output_range_hu),
            },
            "window": self.window,
            "default_stride": self.default_stride,
            "intended_use": self.intended_use,
            "training_data": self.training_data,
            "training": self.training,
            "weights_file": self.weights_file,
            "sha256": self.sha256,
            "created": self.created,
            **({"input_statistics": self.input_statistics} if self.input_statistics else {}),
            **({"enhancement_statistics": self.enhancement_statistics} if self.enhancement_statistics else {}),
        }

    @classmethod
    def from_dict(cls, data: dict, path: Path | None = None) -> "ModelCard":
        if data.get("format") != CARD_FORMAT:
            raise ModelError(path, f"not a model card (format {data.get('format')!r}, expected {CARD_FORMAT!r})")
        try:
            card = cls(
                model_id=data["model_id"],
                architecture=data["architecture"],
                encoding=WindowEncoding.from_dict(data["input_encoding"]),
                window=data["window"],
                default_stride=int(data["default_stride"]),
                intended_use=data["intended_use"],
                training_data=data["training_data"],
                weights_file=data["weights_file"],
                sha256=data["sha256"],
                training=data.get("training", {}),
                created=data.get("created", ""),
                input_statistics=data.get("input_statistics", {}),
                enhancement_statistics=data.get("enhancement_statistics", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(path, f"model card is missing or has a bad field: {exc}") from exc
        if card.architecture.get("name") != GENERATOR_ARCHITECTURE:
            raise ModelError(
                path,
                f"unknown architecture {card.architecture.get('name')!r}; this version knows {GENERATOR_ARCHITECTURE!r}",
            )
        return card


@dataclass
class LoadedModel:
    """A generator in eval mode together with the card it came from."""

    card: ModelCard
    generator: UNetGenerator3D
    card_path: Path

    @property
    def encoding(self) -> WindowEncoding:
        return self.card.encoding


def _check_not_pickle(path: Path) -> None:
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise ModelError(path, "weights must be a .safetensors file; pickled checkpoints are refused because loading them can run code")
    with open(path, "rb") as fh:
        head = fh.read(9)
    # A safetensors file starts with an 8-byte little-endian header length followed by '{'.
    if head[:1] == b"\x80" or head[:2] == b"PK" or len(head) < 9 or head[8:9] != b"{":
        raise ModelError(path, "is not a safetensors file (looks like a pickle/zip checkpoint or is truncated); refusing to load it")


def _card_file(card_path: str | Path) -> Path:
    """The card itself, also when given the folder that holds exactly one card, or a model store name."""
    from .store import resolve

    card_path = resolve(card_path)
    if card_path.is_dir():
        cards = sorted(card_path.glob("*.json"))
        if len(cards) != 1:
            raise ModelError(card_path, f"folder holds {len(cards)} model cards (.json); name one")
        return cards[0]
    return card_path


def read_card(card_path: str | Path) -> ModelCard:
    card_path = _card_file(card_path)
    if not card_path.exists():
        raise ModelError(card_path, "model card not found")
    if card_path.suffix.lower() in _PICKLE_SUFFIXES:
        _check_not_pickle(card_path)
    if card_path.suffix.lower() != ".json":
        raise ModelError(card_path, "a model is given by its JSON model card, not by its weights file")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(card_path, f"model card is not readable JSON: {exc}") from exc
    return ModelCard.from_dict(data, card_path)


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
    generator = UNetGenerator3D(config)
    try:
        state = load_file(str(weights), device="cpu")
        generator.load_state_dict(state, strict=True)
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise ModelError(weights, f"weights do not fit the architecture in the card: {exc}") from exc
    generator.eval().to(resolve_device(device))
    return LoadedModel(card=card, generator=generator, card_path=card_path)


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
