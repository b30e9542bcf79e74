"""The Slicer side under released Slicer's Python (3.9, numpy 1.26): every module of the extension compiles with it,
and what the panel computes in Slicer's own process without torch (the model card, the plan before Apply) runs.
slicer-core has no wheel for Python 3.9, so the widget and the Logic themselves are tested under the current
versions only (tests/test_slicer_*.py)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SyntheticContrast"))

SOURCES = sorted((ROOT / "SyntheticContrast").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_compiles_under_this_python(path):
    compile(path.read_text(encoding="utf-8"), str(path), "exec", dont_inherit=True)


def test_the_panels_plan_is_made_without_torch_under_this_python():
    had_torch = "torch" in sys.modules  # the whole suite in one process has imported it already
    from SyntheticContrastLib.engine import host_memory, planner
    from SyntheticContrastLib.engine.bundled import DEFAULT_MODEL_CARD
    from SyntheticContrastLib.engine.cards import read_card

    card = read_card(DEFAULT_MODEL_CARD)
    plan = planner.plan_card(card, (48, 512, 512), planner.DeviceFacts(free_bytes=host_memory.available_bytes()))
    assert plan.batch_size == 1 and plan.windows == 245 and plan.line().startswith(("fits: ", "needs: ", "does not fit: "))
    assert had_torch or "torch" not in sys.modules
