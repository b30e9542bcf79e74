"""The model store: install checks the sha256 and is atomic, names resolve everywhere --model is taken, a site
store is read-only, and the bundled demo model is package data that a built wheel carries."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from SyntheticContrastLib.cli import main
from SyntheticContrastLib.engine import store
from SyntheticContrastLib.engine.models import DEFAULT_MODEL_CARD, load_model
from SyntheticContrastLib.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def stores(tmp_path, monkeypatch):
    monkeypatch.setenv(store.USER_ENV, str(tmp_path / "user"))
    monkeypatch.setenv(store.SITE_ENV, str(tmp_path / "site"))
    return tmp_path / "user", tmp_path / "site"


def test_install_list_show_verify_remove(stores, tiny_model_card, capsys):
    user, _ = stores
    assert main(["models", "install", str(tiny_model_card.parent), "--name", "chest-v1"]) == 0
    assert (user / "chest-v1" / "tiny-test.json").is_file() and not list(user.glob(".*partial"))
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["chest-v1", "demo_phantom_small"]  # one a line, the name first
    assert lines[0].split("\t")[1:3] == ["user", "tiny-test"]
    assert main(["models", "show", "demo_phantom_small"]) == 0
    shown = capsys.readouterr().out
    assert "exported epoch 12 (lowest validation MAE): validation MAE 9.61" in shown and "DEMONSTRATION ONLY" in shown and "input statistics (16 volumes)" in shown
    assert load_model("chest-v1").card.model_id == "tiny-test"  # a name works wherever a card path does
    assert main(["models", "install", str(tiny_model_card), "--name", "chest-v1"]) == 1  # never replaced silently
    assert "already installed" in capsys.readouterr().err
    weights = user / "chest-v1" / "tiny-test.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    assert main(["models", "verify"]) == 1
    out = capsys.readouterr().out
    assert "chest-v1\tuser\tBROKEN: sha256 of tiny-test.safetensors" in out and "demo_phantom_small\tbundled\tok" in out
    assert main(["models", "remove", "chest-v1"]) == 0 and not (user / "chest-v1").exists()


def test_a_tampered_card_is_not_installed_and_leaves_nothing(stores, tiny_model_card):
    user, _ = stores
    card = json.loads(tiny_model_card.read_text())
    card["sha256"] = "0" * 64
    tiny_model_card.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="sha256 does not match its card"):
        store.install(tiny_model_card)
    assert not user.exists() or not any(user.iterdir())


def test_a_site_store_is_shared_read_only_and_a_user_model_shadows_it(stores, tiny_model_card):
    user, site = stores
    shutil.copytree(tiny_model_card.parent, site / "chest-v1")
    assert store.find("chest-v1").place == "site"
    with pytest.raises(ModelError, match="is a site model; only models in the user store"):
        store.remove("chest-v1")
    store.install(tiny_model_card, "chest-v1")
    assert store.find("chest-v1").place == "user" and [m.name for m in store.list_models()].count("chest-v1") == 1
    with pytest.raises(ModelError, match="no model named 'nope' in the model store"):
        load_model("nope")


def test_a_weights_file_missing_a_tensor_is_refused_and_the_tensor_named(tmp_path, tiny_model_card):
    from safetensors.torch import load_file, save_file

    from SyntheticContrastLib.fileio import sha256_of

    card = json.loads(tiny_model_card.read_text())
    weights = tiny_model_card.parent / card["weights_file"]
    state = load_file(str(weights))
    dropped = sorted(state)[-1]
    del state[dropped]
    save_file(state, str(weights))
    card["sha256"] = sha256_of(weights)  # an intact file, signed by its card, that lacks one tensor
    tiny_model_card.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="weights do not fit the architecture in the card") as caught:
        load_model(tiny_model_card)
    assert dropped in str(caught.value) and "Missing key" in str(caught.value)


def test_a_half_finished_install_left_by_a_kill_is_neither_listed_nor_in_the_way(stores, tiny_model_card, capsys):
    user, _ = stores
    left = user / ".chest-v1.k3j2.partial"  # atomic_dir's staging folder, as a kill during the copy leaves it
    left.mkdir(parents=True)
    shutil.copy2(tiny_model_card, left / tiny_model_card.name)  # the card copied, the weights not yet
    (user / "half").mkdir()
    shutil.copy2(tiny_model_card, user / "half" / tiny_model_card.name)  # copied by hand, weights forgotten
    names = [m.name for m in store.list_models()]
    assert "chest-v1" not in names and not any(n.startswith(".") for n in names)
    with pytest.raises(ModelError, match="no model named 'chest-v1'"):
        store.find("chest-v1")
    assert main(["models", "verify"]) == 1
    assert "half\tuser\tBROKEN: weights tiny-test.safetensors missing" in capsys.readouterr().out
    store.install(tiny_model_card, "chest-v1")  # the leftover does not block the real install
    assert load_model("chest-v1").card.model_id == "tiny-test"


def test_a_built_wheel_carries_the_demo_model(tmp_path):
    """pip install of a wheel: the demo model is package data, so the default --model works outside the source tree."""
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info next to the sources
    shutil.copytree(ROOT / "SyntheticContrast", source / "SyntheticContrast", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("synthetic_contrast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for suffix in (".json", ".safetensors"):
        assert f"SyntheticContrastLib/engine/bundled_models/{DEFAULT_MODEL_CARD.stem}{suffix}" in names
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); from SyntheticContrastLib.engine.models import load_model;"
             "m = load_model(); print(m.card_path)")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "site")], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout.strip()
    assert out.startswith(str(tmp_path / "site")) and out.endswith("demo_phantom_small.json")
