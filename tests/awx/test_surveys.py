"""The surveys of awx/vars/templates.yml against what their playbooks accept.

Each survey is a survey AWX takes (the API's survey spec rules, and defaults that pass AWX's own answer
validation: AWX drops a default that does not, silently); each variable is an option of its playbook's
entry point in roles/run_contract/meta/argument_specs.yml, of a type and with choices that fit what the
survey sends; every option the entry point requires is asked (required) or fixed by the template; and the
entry point's spec, run for real by ansible.builtin.validate_argument_spec, accepts the survey's default
answers and every choice it offers, and refuses a choice it does not offer.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.awx.conftest import (
    ansible_playbook,
    entry_points,
    job_templates,
    stem,
    surveyed,
)

SURVEYS = surveyed()
IDS = [survey[0] for survey in SURVEYS]

# AWX's question types and the Python type of their answers (awx/main/models/mixins.py,
# SurveyJobTemplateMixin._survey_element_validation; awx/api/views, JobTemplateSurveySpec.ALLOWED_TYPES).
ANSWER_TYPES: dict[str, type | tuple[type, ...]] = {
    "text": str, "textarea": str, "password": str, "integer": int, "float": (float, int),
    "multiplechoice": str, "multiselect": list,
}
# Answers for required questions without a default (what an operator would type).
EXAMPLES = {"patch_id": "matching-engine-1.4.3"}
# Variables a survey must never offer: who runs the job and which run it is come from AWX itself (the run
# contract), and the driver's cancel file means nothing under AWX.
NOT_ASKED = {"preflight_operator", "preflight_run_id", "rollback_run_id", "exchpatch_cancel_file"}


def choices(question: dict[str, Any]) -> list[str]:
    raw = question.get("choices", [])
    return [c for c in raw.splitlines() if c.strip()] if isinstance(raw, str) else list(raw)


def awx_answer_errors(question: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """AWX's validation of one answer (SurveyJobTemplateMixin._survey_element_validation), which also
    decides whether a default is used: a default that fails it is dropped."""
    var, qtype = question["variable"], question["type"]
    if var not in data:
        return [f"{var}: value missing"] if question["required"] else []
    value = data[var]
    lo, hi = question.get("min"), question.get("max")
    lo = None if lo in ("", None) else lo
    hi = None if hi in ("", None) else hi
    if qtype in ("text", "textarea", "password"):
        if not isinstance(value, str):
            return [f"{var}: {value!r} is not a string"]
        return ([f"{var}: shorter than {lo}"] if lo is not None and len(value) < int(lo) else []) + \
               ([f"{var}: longer than {hi}"] if hi is not None and len(value) > int(hi) else [])
    if qtype in ("integer", "float"):
        # AWX checks the exact type: True is not an integer answer
        if isinstance(value, bool) or not isinstance(value, int if qtype == "integer" else (int, float)):
            return [f"{var}: {value!r} is not {qtype}"]
        return ([f"{var}: below {lo}"] if lo is not None and value < lo else []) + \
               ([f"{var}: above {hi}"] if hi is not None and value > hi else [])
    if qtype == "multiselect":
        if not isinstance(value, list):
            return [f"{var}: not a list"]
        return [f"{var}: {v!r} not a choice" for v in value if v not in choices(question)]
    if qtype == "multiplechoice":
        return [] if value in choices(question) else [f"{var}: {value!r} not one of {choices(question)}"]
    return [f"{var}: unknown type {qtype}"]


def default_answer(question: dict[str, Any]) -> Any:
    """The default as AWX sends it (a multiselect's default is newline-separated text, sent as a list)."""
    if question["type"] == "multiselect":
        return choices({"choices": question["default"]})
    return question["default"]


@pytest.mark.parametrize(("name", "survey", "entry", "fixed"), SURVEYS, ids=IDS)
def test_survey_is_one_awx_takes(name, survey, entry, fixed):
    assert isinstance(survey.get("name"), str) and isinstance(survey.get("description"), str), name
    assert isinstance(survey.get("spec"), list) and survey["spec"], f"{name}: an AWX survey needs at least one question"
    seen: set[str] = set()
    for q in survey["spec"]:
        var = q.get("variable")
        where = f"{name}: question {var!r}"
        for field, kind in (("type", str), ("question_name", str), ("variable", str), ("required", bool)):
            assert isinstance(q.get(field), kind), f"{where}: {field} must be a {kind.__name__}"
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", var), f"{where}: not a variable name"
        assert var not in seen, f"{where}: asked twice"
        seen.add(var)
        assert q["type"] in ANSWER_TYPES, f"{where}: AWX has no question type {q['type']}"
        assert not var.startswith(("awx_", "tower_")) and var not in NOT_ASKED, \
            f"{where}: this comes from AWX (operator, job id) or the driver, never from a survey"
        for limit in ("min", "max"):
            assert q.get(limit) is None or (isinstance(q[limit], int) and not isinstance(q[limit], bool)), \
                f"{where}: {limit} must be an integer"
        if q["type"] in ("multiplechoice", "multiselect"):
            assert choices(q) and len(set(choices(q))) == len(choices(q)), f"{where}: choices missing or repeated"
            assert all(isinstance(c, str) for c in choices(q)), f"{where}: AWX compares choices as text"
        if "default" in q:
            expected = str if q["type"] == "multiselect" else ANSWER_TYPES[q["type"]]
            assert isinstance(q["default"], expected), f"{where}: AWX refuses a default of this type"
            # AWX uses a default only when it passes the question's own validation
            assert awx_answer_errors(q, {var: default_answer(q)}) == [], f"{where}: AWX would drop this default"


def option_fits(question: dict[str, Any], option: dict[str, Any]) -> str | None:
    """Why an answer of this question cannot be what the option takes, or None when it can."""
    qtype, otype = question["type"], option.get("type", "str")
    offered, allowed = choices(question), option.get("choices")
    if qtype in ("text", "textarea", "password"):
        if otype not in ("str", "raw") or allowed:
            return f"a {qtype} answer is free text; the option is {otype} with choices {allowed}"
    elif qtype == "integer":
        if otype not in ("int", "raw"):
            return f"an integer answer for a {otype} option"
    elif qtype == "float":
        if otype not in ("float", "raw"):
            return f"a float answer for a {otype} option"
    elif qtype == "multiplechoice":
        if otype == "bool":
            if set(offered) != {"true", "false"}:
                return f"a bool option offered as {offered}; offer exactly \"true\" and \"false\""
        elif otype not in ("str", "raw"):
            return f"a multiplechoice answer is text; the option is {otype}"
        elif allowed and not set(offered) <= set(allowed):
            return f"offers {sorted(set(offered) - set(allowed))}, which the option does not take ({allowed})"
    elif qtype == "multiselect":
        if otype != "list" or option.get("elements", "str") != "str":
            return f"a multiselect answer is a list of text; the option is {otype}"
        if allowed and not set(offered) <= set(allowed):
            return f"offers {sorted(set(offered) - set(allowed))}, which the option does not take ({allowed})"
    return None


@pytest.mark.parametrize(("name", "survey", "entry", "fixed"), SURVEYS, ids=IDS)
def test_every_question_is_an_option_of_the_playbook(name, survey, entry, fixed):
    specs = entry_points()
    assert entry in specs, f"{name}: no entry point {entry!r} in roles/run_contract/meta/argument_specs.yml"
    options = specs[entry].get("options") or {}
    for q in survey["spec"]:
        var = q["variable"]
        assert var in options, f"{name}: {var} is not an option of {entry} (the playbook would ignore it)"
        why = option_fits(q, options[var])
        assert why is None, f"{name}: {var}: {why}"
        if options[var].get("required"):
            assert q["required"], f"{name}: {entry} requires {var}; the question must be required"
    for var in fixed:
        assert var in options, f"{name}: the template sets {var}, which is not an option of {entry}"


@pytest.mark.parametrize(("name", "survey", "entry", "fixed"), SURVEYS, ids=IDS)
def test_every_required_option_is_asked_or_set(name, survey, entry, fixed):
    asked = {q["variable"] for q in survey["spec"] if q["required"]}
    for var, option in (entry_points()[entry].get("options") or {}).items():
        if option.get("required"):
            assert var in asked or var in fixed, f"{name}: {entry} requires {var}: ask it (required) or set it"


@pytest.mark.parametrize("jt", job_templates(), ids=[jt["name"] for jt in job_templates()])
def test_a_template_without_survey_has_nothing_to_ask(jt):
    """Each job template has a survey, unless its playbook takes no variable (fleet_status: its entry point
    has no option) or is not one of the collection's (the workflow's failure step)."""
    entry = stem(jt["playbook"])
    options = (entry_points().get(entry) or {}).get("options") or {} if entry else {}
    if options:
        assert jt.get("survey_enabled") and jt.get("survey_spec"), f"{jt['name']}: {entry} takes {sorted(options)}"
    else:
        assert not jt.get("survey_enabled") and not jt.get("survey_spec"), jt["name"]
        for var in jt.get("extra_vars") or {}:
            pytest.fail(f"{jt['name']}: sets {var}, which {jt['playbook']} does not take")


# --- the entry points' specs, run for real -------------------------------------------------------------


def _strip_descriptions(spec: Any) -> Any:
    if isinstance(spec, dict):
        return {k: _strip_descriptions(v) for k, v in spec.items() if k not in ("description", "short_description")}
    if isinstance(spec, list):
        return [_strip_descriptions(v) for v in spec]
    return spec


def _answers(survey: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """What AWX passes for a launch that keeps every default: the template's extra vars, the defaults, and
    an operator's answer to each required question without one."""
    answers = dict(fixed)
    for q in survey["spec"]:
        if "default" in q:
            answers[q["variable"]] = default_answer(q)
        elif q["required"]:
            # a question without default or example fails the default answers' case: add it to EXAMPLES
            answers[q["variable"]] = EXAMPLES.get(q["variable"]) or (choices(q) or [None])[0]
    return answers


def _cases() -> list[tuple[str, str, dict[str, Any], bool]]:
    """(case id, entry point, answers, accepted?) for every survey."""
    cases = []
    for name, survey, entry, fixed in SURVEYS:
        base = _answers(survey, fixed)
        cases.append((f"{name}: the default answers", entry, base, True))
        blank = {**base, **{q["variable"]: "" for q in survey["spec"]
                            if q["type"] in ("text", "textarea") and not q["required"]}}
        cases.append((f"{name}: optional text left blank", entry, blank, True))
        for q in survey["spec"]:
            var = q["variable"]
            if q["type"] == "multiplechoice":
                for choice in choices(q):
                    cases.append((f"{name}: {var}={choice}", entry, {**base, var: choice}, True))
                cases.append((f"{name}: {var}=not-a-choice", entry, {**base, var: "not-a-choice"}, False))
            if q["type"] in ("integer", "float"):
                for limit in ("min", "max"):
                    if q.get(limit) is not None:
                        cases.append((f"{name}: {var}={q[limit]} ({limit})", entry, {**base, var: q[limit]}, True))
            if q["type"] == "multiselect":
                cases.append((f"{name}: {var}=every choice", entry, {**base, var: choices(q)}, True))
        # the harness passes what it is given: a name the spec does not know is refused
        first = survey["spec"][0]["variable"]
        cases.append((f"{name}: {first}_typo", entry, {**base, f"{first}_typo": base.get(first, "x")}, False))
        for var, option in (entry_points()[entry].get("options") or {}).items():
            if option.get("required") and var in base:
                cases.append((f"{name}: without {var}", entry, {k: v for k, v in base.items() if k != var}, False))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def validated(tmp_path_factory, bare_config) -> dict[str, list[str]]:
    """Every case's argument errors, from one ansible-playbook run of ansible.builtin.validate_argument_spec
    with the entry point's spec (as the roles' own validation runs it) and the case's answers."""
    tmp = tmp_path_factory.mktemp("awx-validate")
    results = tmp / "results.json"
    specs = entry_points()
    tasks = []
    for i, case in enumerate(CASES):
        entry, answers = case[1], case[2]
        tasks.append({
            "name": f"Validate case {i}",
            "ansible.builtin.validate_argument_spec": {
                "argument_spec": _strip_descriptions(specs[entry].get("options") or {}),
                "provided_arguments": answers,
            },
            "register": f"case_{i}",
            "failed_when": False,
        })
    collect = ", ".join(f"'{i}': case_{i}.argument_errors | default([])" for i in range(len(CASES)))
    tasks.append({"name": "Write the results", "ansible.builtin.copy": {
        "dest": str(results), "content": "{{ {" + collect + "} | to_json }}", "mode": "0600"}})
    playbook = [{"name": "Validate survey answers", "hosts": "localhost", "connection": "local",
                 "gather_facts": False, "tasks": tasks}]
    text = yaml.safe_dump(playbook, sort_keys=False)
    assert text.count("{{") == 1, "an answer or a spec holds a template; it would be rendered, not validated"
    (tmp / "validate.yml").write_text(text)
    res = ansible_playbook([tmp / "validate.yml"], bare_config, cwd=tmp)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    errors = json.loads(results.read_text())
    return {CASES[int(i)][0]: errs for i, errs in errors.items()}


@pytest.mark.parametrize(("case", "entry", "answers", "accepted"), CASES, ids=[c[0] for c in CASES])
def test_the_entry_point_takes_what_the_survey_sends(validated, case, entry, answers, accepted):
    errors = validated[case]
    if accepted:
        assert errors == [], f"{case}: {entry} refuses {answers}: {errors}"
    else:
        assert errors, f"{case}: {entry} accepts {answers}, which it must refuse"
