"""The code the docs show can't rot unnoticed: every Python block in README.md and docs/ compiles (and the
blocks users copy whole are run or compared elsewhere: the README's quick start in tests/test_packaging.py,
the testing patterns in tests/test_fixtures.py and tests/test_sample_project.py, the generated tables in
tests/test_structure.py). ``make docs`` builds the site with ``--strict`` (links, anchors, nav)."""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^( *)```python\n(.*?)\n\1```", re.M | re.S)


def blocks() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 2
            found.append((f"{page.relative_to(ROOT)}:{line}", line, textwrap.dedent(match[2])))
    return found


def test_the_docs_have_python_blocks():
    assert len(blocks()) > 20


@pytest.mark.parametrize(("where", "line", "code"), blocks(), ids=[b[0] for b in blocks()])
def test_each_python_block_compiles(where, line, code):
    try:
        compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except SyntaxError as exc:
        pytest.fail(f"{where}: line {line + (exc.lineno or 1) - 1}: {exc.msg}: {exc.text!r}")


def test_every_page_is_in_the_sites_nav():
    """mkdocs --strict warns about a page left out of the nav; this says which, without building."""
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.name for p in PAGES[1:] if f": {p.name}" not in nav]
    assert missing == [], missing
