"""The man pages generated from the option tables are committed up to date."""

from __future__ import annotations

import os

import pytest
from initium.options import OPTIONS
from initium.packaging.config import SETTINGS
from initium.packaging.manpages import PAGES

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "docs")


@pytest.mark.parametrize("name", sorted(PAGES))
def test_generated_page_is_current(name: str) -> None:
    with open(os.path.join(DOCS, name), encoding="utf-8") as f:
        committed = f.read()
    assert committed == PAGES[name](), f"docs/{name} is stale: run scripts/gen-docs.py"


def test_every_option_and_setting_is_documented() -> None:
    cmdline, conf = PAGES["initium.cmdline.7"](), PAGES["initium.conf.5"]()
    for option in OPTIONS:
        assert f"\\fB{option.key.replace('-', chr(92) + '-')}" in cmdline, option.key
    for setting in SETTINGS:
        assert f"\\fB{setting.key}\\fR" in conf, setting.key
