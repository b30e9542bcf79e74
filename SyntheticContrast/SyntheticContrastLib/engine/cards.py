"""Model cards: the JSON beside each weights file that says what the model is, how it was trained and what its
training data looked like. Readable without torch, so listing models (the Slicer panel on a first launch, `models
list`, `--help`) needs none."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .encoding import WindowEncoding
from ..errors import ModelError

GENERATOR_ARCHITECTURE = "pix2pix3d-unet"
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

    def generator_config(self):
        """The generator's GeneratorConfig (engine/networks.py, which needs torch)."""
        from .networks import GeneratorConfig

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
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(path, f"model card is missing or has a bad field: {exc}") from exc
        if not isinstance(card.architecture, dict) or not isinstance(card.window, dict):
            raise ModelError(path, "model card's 'architecture' and 'window' must be JSON objects")
        if card.architecture.get("name") != GENERATOR_ARCHITECTURE:
            raise ModelError(
                path,
                f"unknown architecture {card.architecture.get('name')!r}; this version knows {GENERATOR_ARCHITECTURE!r}",
            )
        return card


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
    if not isinstance(data, dict):
        raise ModelError(card_path, f"is not a model card: it holds a JSON {type(data).__name__}, not an object")
    return ModelCard.from_dict(data, card_path)
