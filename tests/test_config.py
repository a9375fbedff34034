"""Tests for rlaifv.config: defaults <- YAML <- flags, nested dataclasses, loud unknown keys.

One config object serves the Python API, the CLI and YAML files; a typo must never pass
silently, a flag that was not given (None) must not clobber the YAML, and a dumped config must
load back to the same object (runs are reproducible from their saved config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from rlaifv.config import ConfigError, dump_yaml, from_dict, load_config
from rlaifv.models.tiny import TinyVLMConfig
from rlaifv.sandbox.pretrain import PRESETS, PretrainConfig
from rlaifv.sandbox.world import DEFAULT_PAIRS, WorldConfig


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_only() -> None:
    assert load_config(PretrainConfig) == PretrainConfig()
    cfg = load_config(PretrainConfig, None, {"steps": None, "seed": None})
    assert cfg == PretrainConfig()


def test_yaml_overrides_defaults_including_nested(tmp_path: Path) -> None:
    y = write(tmp_path / "c.yaml", """
steps: 7
lr: 0.5
model:
  arch: llava
  text_layers: 1
world:
  cooccur_p: 0.25
  pairs: [[circle, star]]
mix: {describe: 1.0}
""")
    cfg = load_config(PretrainConfig, y)
    assert cfg.steps == 7 and cfg.lr == 0.5
    # untouched top-level fields keep their defaults
    assert cfg.batch_size == PretrainConfig().batch_size and cfg.vision_steps == 300
    # nested sections become the nested dataclasses, with only the given fields changed
    assert isinstance(cfg.model, TinyVLMConfig) and isinstance(cfg.world, WorldConfig)
    assert cfg.model == TinyVLMConfig(arch="llava", text_layers=1)
    assert cfg.world.cooccur_p == 0.25 and cfg.world.max_objects == 5
    # YAML lists become the tuple type the field declares (WorldConfig is frozen / hashable)
    assert cfg.world.pairs == (("circle", "star"),)
    assert cfg.world.companion("star") == "circle"
    hash(cfg.world)
    assert cfg.mix == {"describe": 1.0}


def test_flag_overrides_beat_yaml_and_none_is_ignored(tmp_path: Path) -> None:
    y = write(tmp_path / "c.yaml", "steps: 7\nseed: 3\nmodel: {text_layers: 1, arch: llava}\n")
    cfg = load_config(PretrainConfig, y, {"steps": 11, "seed": None, "vision_steps": None, "model": {"text_hidden": 64}})
    assert cfg.steps == 11  # flag beats YAML
    assert cfg.seed == 3  # None means "flag not given": YAML value stays
    assert cfg.vision_steps == 300  # None and absent from YAML: default stays
    # a nested flag override merges with the YAML section rather than replacing it
    assert cfg.model == TinyVLMConfig(arch="llava", text_layers=1, text_hidden=64)


def test_base_config_is_the_starting_point() -> None:
    # As the CLI does with presets: base <- flags: the flag wins, the preset fills the rest.
    cfg = load_config(PretrainConfig, None, {"steps": 5, "seed": None}, base=PRESETS["policy"])
    assert cfg.steps == 5 and cfg.p_extra == PRESETS["policy"].p_extra > 0 and cfg.preset == "policy"
    assert cfg.world == WorldConfig() and cfg.world.pairs == DEFAULT_PAIRS
    assert PRESETS["policy"].steps == 1200  # the preset itself is not mutated


def test_unknown_top_level_key_names_the_key(tmp_path: Path) -> None:
    y = write(tmp_path / "c.yaml", "stepz: 3\n")
    with pytest.raises(ConfigError, match="stepz"):
        load_config(PretrainConfig, y)
    with pytest.raises(ConfigError, match="bogus_flag"):
        load_config(PretrainConfig, None, {"bogus_flag": 1})


def test_unknown_nested_key_names_section_and_key(tmp_path: Path) -> None:
    y = write(tmp_path / "c.yaml", "model:\n  layers: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, y)
    assert "layers" in str(e.value) and ".model" in str(e.value)


def test_missing_file_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(PretrainConfig, missing)


def test_non_mapping_yaml_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config(PretrainConfig, write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="expected a mapping, got list"):
        from_dict(TinyVLMConfig, [1, 2])  # type: ignore[arg-type]


def test_empty_yaml_means_defaults(tmp_path: Path) -> None:
    assert load_config(PretrainConfig, write(tmp_path / "e.yaml", "")) == PretrainConfig()


def test_dump_then_load_roundtrips(tmp_path: Path) -> None:
    # A non-default config with every kind of field changed: scalars, nested dataclasses, a
    # tuple-of-tuples inside a nested frozen dataclass, a dict.
    cfg = PretrainConfig(
        preset="x", seed=9, steps=3, lr=0.125,
        model=TinyVLMConfig(arch="llava", text_layers=2, image_size=32, patch_size=8),
        world=WorldConfig(cooccur_p=0.1, pairs=(("circle", "ring"), ("star", "cross"))),
        mix={"describe": 0.75, "probe": 0.25}, per_example_loss=False,
    )
    path = dump_yaml(cfg, tmp_path / "sub" / "dumped.yaml")
    assert path.exists()
    raw = yaml.safe_load(path.read_text())  # plain YAML: lists, no python tags
    assert raw["world"]["pairs"] == [["circle", "ring"], ["star", "cross"]]
    assert "image_seq_len" not in raw["model"]  # a property, not a field
    back = load_config(PretrainConfig, path)
    assert back == cfg
    # and the presets round-trip too
    for name, preset in PRESETS.items():
        assert load_config(PretrainConfig, dump_yaml(preset, tmp_path / f"{name}.yaml")) == preset


@dataclass
class _Inner:
    a: int = 1


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=_Inner)
    name: str = "x"


def test_from_dict_generic_nested() -> None:
    assert from_dict(_Outer, {"inner": {"a": 5}}) == _Outer(_Inner(5))
    with pytest.raises(ConfigError, match=r"cfg\.inner: unknown key\(s\) \['b'\]"):
        from_dict(_Outer, {"inner": {"b": 5}}, where="cfg")


def test_scalar_where_section_belongs_is_an_error():
    # A YAML `model: 3` cannot become a TinyVLMConfig.
    with pytest.raises(ConfigError, match="model"):
        load_config(PretrainConfig, None, {"model": 3})


def test_dict_field_replaces_preset_value(tmp_path):
    # A task mix in YAML replaces the preset's mix instead of merging into it.
    from rlaifv.sandbox.pretrain import preset

    y = tmp_path / "c.yaml"
    y.write_text("mix: {describe: 1.0}\n")
    cfg = load_config(PretrainConfig, y, base=preset("labeler"))
    assert cfg.mix == {"describe": 1.0}
