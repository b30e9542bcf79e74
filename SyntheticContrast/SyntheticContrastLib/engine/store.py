"""Where models live, by name: a per-user store (platformdirs; ``SYNTHETIC_CONTRAST_MODELS`` overrides it), an
optional shared read-only site store (``SYNTHETIC_CONTRAST_SITE_MODELS``), and the bundled demo model. Installing
copies a card and its weights atomically and checks the sha256."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..fileio import atomic_dir, sha256_of
from .bundled import BUNDLED_MODELS_DIR
from .cards import ModelCard, _card_file, read_card

USER_ENV, SITE_ENV = "SYNTHETIC_CONTRAST_MODELS", "SYNTHETIC_CONTRAST_SITE_MODELS"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def user_store() -> Path:
    override = os.environ.get(USER_ENV)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir("SyntheticContrast", appauthor=False)) / "models"


def site_store() -> Path | None:
    site = os.environ.get(SITE_ENV)
    return Path(site) if site else None


@dataclass(frozen=True)
class StoredModel:
    name: str
    card_path: Path
    place: str  # "user", "site" or "bundled"
    card: ModelCard

    def summary(self) -> str:
        return f"{self.card.model_id}, sha256 {self.card.sha256[:12]}: {self.card.intended_use}"


def _cards_in(root: Path | None, place: str) -> list[StoredModel]:
    """A store holds one folder per model, named by the model's store name, with its card and weights."""
    if root is None or not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cards = sorted(folder.glob("*.json"))
        if len(cards) == 1:
            try:
                found.append(StoredModel(folder.name, cards[0], place, read_card(cards[0])))
            except ModelError:
                continue  # 'verify' names it; a broken model must not hide the others
    return found


def bundled_models() -> list[StoredModel]:
    return [StoredModel(card.stem, card, "bundled", read_card(card)) for card in sorted(BUNDLED_MODELS_DIR.glob("*.json"))]


def list_models() -> list[StoredModel]:
    """Every model by name; a user model shadows a site model of the same name, and both shadow a bundled one."""
    seen, models = set(), []
    try:
        user = user_store()
    except ImportError:  # platformdirs not installed yet (Slicer's first launch): no user store can exist either
        user = None
    for model in _cards_in(user, "user") + _cards_in(site_store(), "site") + bundled_models():
        if model.name not in seen:
            seen.add(model.name)
            models.append(model)
    return models


def find(name: str) -> StoredModel:
    for model in list_models():
        if model.name == name:
            return model
    names = ", ".join(m.name for m in list_models())
    raise ModelError(None, f"no model named {name!r} in the model store ({names}); 'synthetic-contrast models list' shows them, "
                           "'models install CARD' adds one")


def find_or_read(name_or_path: str | Path) -> StoredModel:
    """The store model of that name, else the card at that path (a training run's, before it is installed)."""
    card_path = _card_file(name_or_path)
    for model in list_models():
        if model.card_path.resolve() == card_path.resolve():
            return model
    return StoredModel(card_path.parent.name, card_path, "file", read_card(card_path))


def resolve(name_or_path: str | Path) -> Path:
    """A card path as given when it exists, else the card of the store model with that name."""
    path = Path(name_or_path)
    if path.exists() or path.suffix.lower() == ".json" or len(path.parts) > 1:
        return path
    return find(str(name_or_path)).card_path


def verify_model(model: StoredModel) -> str | None:
    """What is wrong with a stored model's weights, or None."""
    weights = model.card_path.parent / model.card.weights_file
    if not weights.is_file():
        return f"weights {weights.name} missing"
    actual = sha256_of(weights)
    return None if actual == model.card.sha256 else f"sha256 of {weights.name} is {actual[:16]}..., the card says {model.card.sha256[:16]}..."


def install(source: str | Path, name: str | None = None) -> StoredModel:
    """Copy a card (or the folder holding one) and its weights into the user store under ``name`` (default: the
    model id). Checked before and after the copy; the model appears only complete, by a rename."""
    from .cards import _card_file

    card_path = _card_file(Path(source))
    card = read_card(card_path)
    weights = card_path.parent / card.weights_file
    if not weights.is_file():
        raise ModelError(weights, f"weights file named by {card_path.name} not found")
    if sha256_of(weights) != card.sha256:
        raise ModelError(weights, f"sha256 does not match its card {card_path.name}; not installed")
    name = name or card.model_id
    if not NAME.match(name):
        raise ModelError(None, f"model name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    store = user_store()
    target = store / name
    if target.exists():
        raise ModelError(target, f"a model named {name!r} is already installed; remove it first ('models remove {name}')")
    with atomic_dir(target) as staging:
        shutil.copy2(card_path, staging / card_path.name)
        shutil.copy2(weights, staging / weights.name)
        copied = StoredModel(name, staging / card_path.name, "user", read_card(staging / card_path.name))
        problem = verify_model(copied)
        if problem:
            raise ModelError(staging, f"the copy is not intact ({problem}); not installed")
    return StoredModel(name, target / card_path.name, "user", card)


def remove(name: str) -> Path:
    model = find(name)
    if model.place != "user":
        raise ModelError(model.card_path, f"{name!r} is a {model.place} model; only models in the user store ({user_store()}) can be removed")
    shutil.rmtree(model.card_path.parent)
    return model.card_path.parent


def describe(model: StoredModel) -> str:
    """The card as a person reads it: identity, intended use, training data and metrics, and input statistics."""
    card = model.card
    lines = [f"name            {model.name} ({model.place}: {model.card_path})", f"model id        {card.model_id}",
             f"sha256          {card.sha256}", f"created         {card.created or '-'}", f"intended use    {card.intended_use}",
             f"training data   {card.training_data}", f"window          {card.window}, default stride {card.default_stride}"]
    history = card.training.get("history") or [{}]
    final, best = history[-1], card.training.get("best")
    if best and best.get("epoch") != final.get("epoch"):  # the exported weights are the best epoch's, not the last's
        lines.append(f"metrics         exported epoch {best['epoch']} (lowest validation MAE): validation MAE {best['val_mae']:.2f} "
                     f"(input {best['input_mae']:.2f}); the last, epoch {final.get('epoch')}, had {final.get('val_mae', float('nan')):.2f}")
    elif "val_mae" in final:
        lines.append(f"metrics         epoch {final.get('epoch')}: validation MAE {final['val_mae']:.2f} (input {final.get('input_mae', float('nan')):.2f}), "
                     f"PSNR {final.get('val_psnr', float('nan')):.2f} dB (input {final.get('input_psnr', float('nan')):.2f})")
    for key in ("wall_time", "reproduce", "stride_choice", "deviations_from_paper"):
        value = card.training.get(key)
        if value:  # a fine-tuned model's reproduce is its chain of runs, one command a line
            lines.append(f"{key.replace('_', ' '):15.15s} " + ("\n" + " " * 16).join(value if isinstance(value, list) else [value]))
    if card.input_statistics:
        ranges = card.input_statistics.get("ranges", {})
        lines.append(f"input statistics ({card.input_statistics.get('volumes', '?')} volumes): "
                     + ", ".join(f"{k} {v[0]:g}-{v[1]:g}" for k, v in sorted(ranges.items()) if isinstance(v, (list, tuple)) and len(v) == 2))
    else:
        lines.append("input statistics: none (out-of-distribution checks cannot run with this model)")
    from ..trust.plausibility import describe as describe_bounds

    lines.extend(describe_bounds(card.enhancement_statistics))
    return "\n".join(lines)
