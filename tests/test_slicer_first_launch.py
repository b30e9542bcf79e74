"""Slicer's first launch: torch, safetensors and platformdirs are not installed yet. The panel must still list the
bundled model and say what Apply will install, with no traceback and no torch import into Slicer's process (D1, D14).
Run in a child process, where those packages are made unimportable before anything of the project is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

CHILD = r'''
import importlib.util, json, sys, types
BLOCKED = ("torch", "safetensors", "platformdirs")

class Unimportable:
    """An import of a blocked package fails as it does where the package is not installed."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Unimportable())
real_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in BLOCKED else real_find_spec(name, package)
sys.path.insert(0, TESTS)
import slicer_harness

with slicer_harness.installed() as h:
    module = slicer_harness.import_module_fresh()
    logic = module.SyntheticContrastLogic()
    widget = module.SyntheticContrastWidget.__new__(module.SyntheticContrastWidget)
    widget.logic, widget._parameterNode = logic, logic.getParameterNode()
    widget.ui = types.SimpleNamespace(modelComboBox=slicer_harness.QComboBox())
    widget._populateModels()
    combo = widget.ui.modelComboBox
    environment = logic.describeEnvironment()
    h.confirm_answers = [False]
    try:
        logic.ensureDependencies()
        refusal = ""
    except RuntimeError as exc:
        refusal = str(exc)
    prompts = [text for kind, text in h.messages if kind == "confirm"]
    print(json.dumps({"models": [combo.itemText(i) for i in range(combo.count)], "current": combo.itemText(combo.currentIndex),
                      "environment": environment, "prompts": prompts, "refusal": refusal,
                      "torch_imported": "torch" in sys.modules}))
'''


def test_the_panel_describes_an_installed_torch_without_importing_it():
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import slicer_harness\n"
            "with slicer_harness.installed() as h:\n"
            "    logic = slicer_harness.import_module_fresh().SyntheticContrastLogic()\n"
            "    print(logic.describeEnvironment()); print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    text, imported = res.stdout.strip().splitlines()[-2:]
    assert text.startswith("torch 2.") and imported == "False"


def test_the_panel_is_whole_on_a_first_launch_without_torch_safetensors_or_platformdirs():
    res = subprocess.run([sys.executable, "-c", f"TESTS = {str(TESTS)!r}\n" + CHILD], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["models"][0] == "demo_phantom_small" and out["current"] == "demo_phantom_small", out
    assert out["models"][-1].startswith("Install")  # the combo's last entry installs a card
    assert out["environment"] == "PyTorch is not installed yet: it is offered on the first Apply."
    (prompt,) = out["prompts"]
    assert "PyTorch >= 2.1" in prompt and "safetensors>=0.4" in prompt and "platformdirs>=3" in prompt
    assert "declined" in out["refusal"]
    assert out["torch_imported"] is False and "Traceback" not in res.stderr


PARENT = r'''
import os, subprocess, sys
from SyntheticContrastLib.cli.watchdog import JOB_DIR_ENV, PARENT_ENV
job = sys.argv[1]
env = {**os.environ, PARENT_ENV: str(os.getpid()), JOB_DIR_ENV: job}
# A long synthesis (many samples), started as the Slicer module starts it: its own session, log to a file.
child = subprocess.Popen([sys.executable, "-m", "SyntheticContrastLib.cli", "synthesize", f"{job}/input.nrrd",
                          f"{job}/output_synthetic.nrrd", "--progress-json", "--device", "cpu", "--samples", "500"],
                         stdout=open(f"{job}/log.txt", "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
print(child.pid, flush=True)
while b"progress" not in open(f"{job}/log.txt", "rb").read():
    pass
os.kill(os.getpid(), 9)  # Slicer crashes
'''


def test_the_synthesis_child_ends_and_removes_the_patients_ct_when_slicer_dies(tmp_path, tiny_model_card):
    """D12: a crashed Slicer left the child running and a full copy of the CT in the temporary folder."""
    import os
    import time

    from conftest import chest_like
    from SyntheticContrastLib.io.reading import write_volume
    from SyntheticContrastLib.io.volume import Volume

    job = tmp_path / "SyntheticContrast-job"
    job.mkdir()
    write_volume(Volume(chest_like((40, 32, 32)), (0.7, 0.7, 2.5), (0.0, 0.0, 0.0)), job / "input.nrrd")
    env = {**os.environ, "SYNTHETIC_CONTRAST_MODELS": str(tmp_path / "store")}
    code = PARENT.replace('"--samples", "500"]', f'"--samples", "500", "--model", {str(tiny_model_card)!r}]')
    parent = subprocess.run([sys.executable, "-c", code, str(job)], capture_output=True, text=True, env=env, timeout=120)
    assert parent.returncode == -9, parent.stderr
    child = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (job.exists() or _running(child)):
        time.sleep(0.2)
    assert not _running(child), "the synthesis child outlived its parent"
    assert not job.exists(), "the private folder with the patient's CT was left behind"


def _running(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_process_start_and_cancel_have_a_windows_branch():
    """Windows: a new process group (CREATE_NEW_PROCESS_GROUP, 0x00000200 in WinBase.h) and taskkill /T for the tree;
    POSIX: a session of its own and one killpg. Tested here by naming the system, on any machine."""
    sys.path.insert(0, str(TESTS))
    import slicer_harness

    with slicer_harness.installed():
        slicer_harness.import_module_fresh()
        from SyntheticContrastSlicer import process

        assert process.popen_options("nt") == {"creationflags": 0x00000200}
        assert process.popen_options("posix") == {"start_new_session": True}
        assert process.tree_kill_command(4242, "nt") == ["taskkill", "/F", "/T", "/PID", "4242"]
        assert process.tree_kill_command(4242, "posix") is None
