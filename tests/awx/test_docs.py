"""docs/awx.md stays true to awx/: every link resolves, and it names every template, workflow and survey
variable the objects define, with the defaults the surveys give."""

from __future__ import annotations

import re

from tests.awx.conftest import REPO, job_templates, workflows

DOC = REPO / "docs" / "awx.md"


def test_every_link_resolves():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", DOC.read_text()):
        if not re.match(r"[a-z]+://", target):
            assert (DOC.parent / target).exists(), f"docs/awx.md links to {target}, which does not exist"


def test_it_names_every_template_and_survey_question():
    text = DOC.read_text()
    for obj in job_templates() + workflows():
        assert obj["name"] in text, obj["name"]
        for q in (obj.get("survey_spec") or {}).get("spec", []):
            assert f"`{q['variable']}`" in text, f"docs/awx.md does not explain {q['variable']} ({obj['name']})"
            if q.get("default") not in (None, ""):
                assert str(q["default"]) in text, f"{q['variable']}: the default {q['default']} is not in docs/awx.md"
