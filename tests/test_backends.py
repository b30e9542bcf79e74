"""The OpenVINO backend: the same sCECT as PyTorch to well under 0.5 HU, one ONNX export per set of weights, and a
clear refusal where it cannot do what was asked."""

import os

import numpy as np
import pytest

from conftest import TINY, chest_like, tiny_generator
from SyntheticContrastLib.engine.backends import onnx_cache_path
from SyntheticContrastLib.engine.inference import SynthesisOptions, synthesize_volume
from SyntheticContrastLib.engine.models import load_model
from SyntheticContrastLib.io.volume import Volume

pytest.importorskip("openvino", reason="the openvino extra is not installed (CI installs it with the test extra)")


def test_openvino_agrees_with_torch_and_exports_once(tiny_model_card):
    model = load_model(tiny_model_card)
    volume = Volume(np.round(chest_like((20, 48, 40))), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0))
    reference, _ = synthesize_volume(volume, model, SynthesisOptions(device="cpu"))
    result, report = synthesize_volume(volume, model, SynthesisOptions(device="auto", backend="openvino"))
    assert report.device == "cpu (openvino)" and report.windows == _.windows
    assert np.abs(result.array - reference.array).max() < 0.05  # HU
    cache = onnx_cache_path(model)
    assert cache.parent == tiny_model_card.parent and cache.name.startswith("tiny-test-") and cache.suffix == ".onnx"
    stamp = os.stat(cache).st_mtime_ns
    synthesize_volume(volume, model, SynthesisOptions(backend="openvino"))
    assert os.stat(cache).st_mtime_ns == stamp  # the same weights reuse their export


def test_openvino_refuses_dropout_samples_and_reduced_precision(tmp_path, tiny_model_card):
    from dataclasses import replace

    from SyntheticContrastLib.engine.encoding import WindowEncoding
    from SyntheticContrastLib.engine.models import ModelCard, save_model

    volume = Volume(np.round(chest_like((16, 32, 32))), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="runs in fp32"):
        synthesize_volume(volume, load_model(tiny_model_card), SynthesisOptions(backend="openvino", precision="bf16"))
    card = ModelCard(model_id="tiny-dropout", architecture={}, encoding=WindowEncoding(), window={"z": 16, "y": 32, "x": 32},
                     default_stride=4, intended_use="tests only", training_data="none", weights_file="")
    path = save_model(tiny_generator(config=replace(TINY, dropout=0.5)), card, tmp_path / "dropout" / "tiny-dropout.json")
    with pytest.raises(ValueError, match="cannot draw MC-dropout samples"):
        synthesize_volume(volume, load_model(path), SynthesisOptions(backend="openvino", samples=2))


def test_the_bundled_models_export_goes_to_the_cache_not_into_the_package(tmp_path, monkeypatch):
    import platformdirs

    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda *a, **k: str(tmp_path / "cache"))
    path = onnx_cache_path(load_model())
    assert path.parent == tmp_path / "cache" / "onnx" and path.name.startswith("demo_phantom_small-")


def test_synthesize_backend_openvino_on_the_command_line(tmp_path, tiny_model_card, capsys):
    from SyntheticContrastLib.cli import main
    from SyntheticContrastLib.io.reading import write_volume

    write_volume(Volume(np.round(chest_like((16, 32, 32))), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0)), tmp_path / "ct.nrrd")
    assert main(["synthesize", str(tmp_path / "ct.nrrd"), str(tmp_path / "ct_synthetic.nrrd"), "--model", str(tiny_model_card),
                 "--backend", "openvino", "--no-progress"]) == 0
    assert "cpu (openvino)" in capsys.readouterr().out
