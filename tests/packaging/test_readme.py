"""README's "Included content" names exactly what the collection holds: every module, filter, callback,
role and playbook of the tree, and nothing that is not there."""

from __future__ import annotations

import re

from tests.packaging.conftest import REPO


def _section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _paragraph(section: str, lead: str, item: str = r"`([a-z_]+)`\s\(") -> set[str]:
    """The names listed (by default: "`name` (what it is)") in the paragraph that starts with ``lead``."""
    block = section[section.index(f"\n{lead}"):].split("\n\n", 1)[0]
    return set(re.findall(item, block))


def test_included_content_lists_the_tree_exactly():
    section = _section("Included content")
    modules = {p.stem for p in (REPO / "plugins" / "modules").glob("*.py") if not p.name.startswith("_")}
    assert set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M)) == modules
    assert _paragraph(section, "Filters:") == {p.stem for p in (REPO / "plugins" / "filter").glob("*.yml")}
    assert _paragraph(section, "Callbacks:") == {
        p.stem for p in (REPO / "plugins" / "callback").glob("*.py") if not p.name.startswith("_")}
    assert _paragraph(section, "Roles") == {p.name for p in (REPO / "roles").iterdir() if p.is_dir()}
    assert _paragraph(section, "Playbooks", r"`([a-z_]+)`[,.]") == {p.stem for p in (REPO / "playbooks").glob("*.yml")}
