"""Model cards and safetensors weights: round trip, digest check, pickle refusal, unknown architecture."""

import json
import pickle
from pathlib import Path

import pytest
import torch

from conftest import tiny_generator
from SyntheticContrastLib.errors import ModelError
from SyntheticContrastLib.engine.models import load_model, sha256_of


def test_round_trip_gives_identical_weights(tiny_model_card):
    model = load_model(tiny_model_card)
    reference = tiny_generator().state_dict()
    for key, value in model.generator.state_dict().items():
        assert torch.equal(value, reference[key])
    card = json.loads(tiny_model_card.read_text())
    assert card["sha256"] == sha256_of(tiny_model_card.with_suffix(".safetensors"))
    for field in ("architecture", "input_encoding", "output_mapping", "window", "default_stride", "intended_use", "training_data"):
        assert field in card
    assert not model.generator.training


def test_tampered_weights_are_refused(tiny_model_card):
    weights = tiny_model_card.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_model(tiny_model_card)


def test_truncated_weights_are_refused(tiny_model_card):
    weights = tiny_model_card.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_model(tiny_model_card)


def test_pickles_are_refused_even_with_a_safetensors_name(tiny_model_card, tmp_path):
    weights = tiny_model_card.with_suffix(".safetensors")
    weights.write_bytes(pickle.dumps({"evil": 1}))
    card = json.loads(tiny_model_card.read_text())
    card["sha256"] = sha256_of(weights)  # even a matching digest must not let a pickle through
    tiny_model_card.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a safetensors file"):
        load_model(tiny_model_card)
    pt = tmp_path / "model.pt"
    torch.save(tiny_generator().state_dict(), pt)
    with pytest.raises(ModelError, match="pickled checkpoints are refused"):
        load_model(pt)


def test_unknown_architecture_is_refused(tiny_model_card):
    card = json.loads(tiny_model_card.read_text())
    card["architecture"]["name"] = "cyclegan2d"
    tiny_model_card.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="unknown architecture 'cyclegan2d'"):
        load_model(tiny_model_card)


def test_card_parameters_that_do_not_fit_the_weights_are_refused(tiny_model_card):
    card = json.loads(tiny_model_card.read_text())
    card["architecture"]["parameters"]["ngf"] = 4
    tiny_model_card.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="do not fit the architecture"):
        load_model(tiny_model_card)


def test_the_bundled_cards_stride_agrees_with_its_training_or_says_why_not():
    """The bundled card's default_stride (10) contradicted its own reproduce command and training config (8) without
    a word. A card whose stride differs from the one it was trained and validated with must say so, naming both."""
    import json

    from SyntheticContrastLib.engine.models import DEFAULT_MODEL_CARD

    card = json.loads(Path(DEFAULT_MODEL_CARD).read_text())
    trained = card["training"]["config"]["default_stride"]
    reproduce = card["training"]["reproduce"]  # a fine-tuned model's is its chain of runs, each with the stride
    assert all(f"--default-stride {trained}" in command for command in ([reproduce] if isinstance(reproduce, str) else reproduce))
    if card["default_stride"] != trained:
        why = card["training"]["stride_choice"]
        assert f"stride {trained}" in why and f"default_stride {card['default_stride']}" in why
