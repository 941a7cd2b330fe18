#!/usr/bin/env python3
"""Regenerate the man pages that come from the option tables (docs/*.7, docs/*.5)."""

from __future__ import annotations

import os

from initium.packaging.manpages import PAGES

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")

if __name__ == "__main__":
    for name, render in PAGES.items():
        with open(os.path.join(DOCS, name), "w", encoding="utf-8") as f:
            f.write(render())
        print(f"wrote docs/{name}")
