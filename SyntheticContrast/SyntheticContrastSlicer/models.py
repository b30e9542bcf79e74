"""The panel's model choice: the model store's models by name, each with its card's summary, and installing a
model card from a file into the user's store."""

from __future__ import annotations

#: The combo's last entry; choosing it opens a file dialog instead of selecting a model.
INSTALL_ENTRY = "Install from file..."


class ModelChoices:
    def choices(self) -> list[dict]:
        """[{name, tooltip}] for the combo, the bundled demo model included; tooltips say what the card says."""
        from SyntheticContrastLib.engine import store

        return [{"name": m.name, "tooltip": f"{m.place} model {m.summary()}\nTraining data: {m.card.training_data}"}
                for m in store.list_models()]

    def default_name(self) -> str:
        from SyntheticContrastLib.engine.bundled import DEFAULT_MODEL_CARD

        return DEFAULT_MODEL_CARD.stem

    def card(self, name: str):
        """The card of a store name or card path ('' is the bundled model), read without torch."""
        from SyntheticContrastLib.engine import store
        from SyntheticContrastLib.engine.cards import read_card

        return read_card(store.resolve(name or self.default_name()))

    def install(self, card_path: str) -> str:
        """Install a card (and its weights) into the user store; returns the name it is chosen by."""
        from SyntheticContrastLib.engine import store

        return store.install(card_path).name
