"""Every YAML overlay the docs tell users to pass to ``rlaifv iterate --preset P --config F``
loads onto its preset and changes what its header says it changes (a typo in a key would be
refused by ``load_config``; a silently ignored key would leave the preset unchanged)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlaifv.config import load_config
from rlaifv.sandbox.loop import PRESETS
from rlaifv.stages.iterate import IterateConfig

ROOT = Path(__file__).resolve().parents[1] / "configs" / "sandbox"
OVERLAYS = sorted(ROOT.glob("*.yaml")) + sorted((ROOT / "direct").glob("*.yaml"))


def _preset(path: Path) -> str:
    return "sandbox-direct" if path.parent.name == "direct" else "sandbox"


@pytest.mark.parametrize("path", OVERLAYS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_overlay_loads_and_changes_its_preset(path):
    text = path.read_text()
    base = PRESETS[_preset(path)]()
    cfg = load_config(IterateConfig, str(path), {}, base=PRESETS[_preset(path)]())
    if "Overlay" in text:  # the header's command names the preset the file is meant for
        assert f"--preset {_preset(path)} " in text
    if "no-op" not in text:  # guarded.yaml says it has become part of its preset
        assert cfg != base, f"{path.name} changes nothing"


def test_direct_experiment_overlays_by_hand():
    load = lambda name: load_config(IterateConfig, str(ROOT / "direct" / name), {}, base=PRESETS["sandbox-direct"]())  # noqa: E731
    assert load("nll_low.yaml").train.nll_weight == 0.2
    assert load("hot.yaml").feedback.sample.temperature == 1.0
    assert load("prompts400.yaml").sandbox_prompts == 400
    assert tuple(load("confounded.yaml").feedback.sample.confounded_temperatures) == (0.4, 0.7, 1.0, 1.3)
    assert load("single_round.yaml").iterations == 1
