"""config/zvonok.example.toml documents every setting, each with its default."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

from zvonok_agi.config import SECTIONS, load_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "zvonok.example.toml"


def test_the_example_shows_every_setting_with_its_default():
    example = tomllib.loads(EXAMPLE.read_text("utf-8"))
    assert set(example) == set(SECTIONS)
    for name, section in SECTIONS.items():
        defaults = section()
        shown = example[name]
        assert set(shown) == {f.name for f in fields(defaults)}, name
        for key, value in shown.items():
            default = getattr(defaults, key)
            assert value == (list(default) if isinstance(default, tuple) else default), key
    assert load_settings(EXAMPLE, environ={}) == load_settings(environ={})
