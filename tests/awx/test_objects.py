"""The AWX objects of awx/ and the playbook that applies them.

Every key of every object is an option of the awx.awx module it is passed to (its documentation, from the
ansible package), with a value of that option's type and choices, and awx/apply.yml passes every key on;
every name an object refers to is an object of awx/; the workflow is plan -> approval -> rolling patch ->
(success) fleet status, audit verify / (failure) notify; every template's playbook exists and passes
``ansible-playbook --syntax-check`` with the project's ansible.cfg; and the apply playbook runs in check
mode against an AWX that has none of the objects yet, sending nothing that would change it and logging no
secret.
"""

from __future__ import annotations

import difflib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.awx.conftest import (
    AWX,
    REPO,
    ansible_playbook,
    job_templates,
    load,
    module_options,
    objects,
    options_with_aliases,
    workflows,
)

# Which awx.awx module each list of awx/vars is passed to (the credential types come from their own files).
MODULES = {
    "exchpatch_awx_credential_types": "credential_type",
    "exchpatch_awx_credentials": "credential",
    "exchpatch_awx_execution_environments": "execution_environment",
    "exchpatch_awx_projects": "project",
    "exchpatch_awx_inventories": "inventory",
    "exchpatch_awx_inventory_sources": "inventory_source",
    "exchpatch_awx_job_templates": "job_template",
    "exchpatch_awx_workflow_job_templates": "workflow_job_template",
}
PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str, "path": str, "bool": bool, "int": int, "float": (int, float), "list": list, "dict": dict,
}


def data(var: str) -> list[dict[str, Any]]:
    if var == "exchpatch_awx_credential_types":
        return [load(name) for name in objects()["exchpatch_awx_credential_type_files"]]
    return objects()[var]


def templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def check_options(value: dict[str, Any], options: dict[str, dict[str, Any]], where: str) -> list[str]:
    """Every key an option, every value of the option's type and among its choices, suboptions included."""
    problems = []
    for key, val in value.items():
        if key not in options:
            near = difflib.get_close_matches(key, options, n=2)
            hint = f" (did you mean {' or '.join(near)}?)" if near else ""
            problems.append(f"{where}: {key} is not an option{hint}")
            continue
        spec = options[key]
        if templated(val) or val is None:
            continue
        kind = spec.get("type", "str")
        if kind in PYTHON_TYPES and (not isinstance(val, PYTHON_TYPES[kind]) or
                                     (kind in ("int", "float") and isinstance(val, bool))):
            problems.append(f"{where}.{key}: {val!r} is not {kind}")
            continue
        if spec.get("choices") is not None and str(val) not in {str(c) for c in spec["choices"]}:
            problems.append(f"{where}.{key}: {val!r} is not one of {spec['choices']}")
        subs = spec.get("suboptions")
        if subs:
            subs = options_with_aliases(subs)
            items = val if kind == "list" else [val]
            for i, item in enumerate(items):
                problems += check_options(item, subs, f"{where}.{key}[{i}]" if kind == "list" else f"{where}.{key}")
    return problems


@pytest.mark.parametrize("var", sorted(MODULES))
def test_every_key_is_an_option_of_its_module(var):
    module = MODULES[var]
    problems = []
    for obj in data(var):
        problems += check_options(obj, module_options(module), f"awx.awx.{module} {obj.get('name')!r}")
        required = [k for k, spec in module_options(module).items() if spec.get("required")]
        problems += [f"{obj.get('name')}: {k} is required by awx.awx.{module}" for k in required if k not in obj]
    assert not problems, "\n".join(problems)


def test_check_options_finds_a_misspelled_option():
    """The check above is not vacuous: a typo, a wrong type and a value outside the choices are found,
    also inside the workflow's nodes."""
    wf = json.loads(json.dumps(workflows()[0]))
    wf["allow_simultanous"] = False
    wf["survey_enabled"] = "yes"
    wf["workflow_nodes"][0]["unified_job_template"]["tpye"] = "job_template"
    wf["workflow_nodes"][1]["related"]["sucess_nodes"] = []
    problems = "\n".join(check_options(wf, module_options("workflow_job_template"), "wf"))
    for expected in ("allow_simultanous is not an option", "survey_enabled: 'yes' is not bool", "tpye is not an option",
                     "sucess_nodes is not an option"):
        assert expected in problems, problems
    wrong_choice = check_options({"pull": "sometimes"}, module_options("execution_environment"), "ee")
    assert "is not one of" in "\n".join(wrong_choice)


def _apply_tasks() -> list[dict[str, Any]]:
    return yaml.safe_load((AWX / "apply.yml").read_text())[0]["tasks"]


def test_the_apply_playbook_passes_every_key_on():
    """A key of the data that the apply playbook does not pass to the module would be dropped silently."""
    looped = {}
    for task in _apply_tasks():
        module = next((k for k in task if k.startswith("awx.awx.")), None)
        loop = re.fullmatch(r"\{\{ (\w+) \}\}", str(task.get("loop", "")))
        if not module or not loop or module != f"awx.awx.{MODULES.get(loop.group(1))}":
            continue
        args = task[module]
        for arg, value in args.items():
            used = set(re.findall(r"\bitem\.(\w+)", str(value)))
            assert used <= {arg}, f"{task['name']}: {arg} takes {used}"
        passed = {arg for arg, value in args.items() if re.search(rf"\bitem\.{arg}\b", str(value))}
        assert loop.group(1) not in looped, f"{loop.group(1)} applied twice"
        looped[loop.group(1)] = passed
    assert set(looped) == set(MODULES), f"no task applies {set(MODULES) - set(looped)}"
    for var, passed in looped.items():
        for obj in data(var):
            assert set(obj) <= passed, f"{var} {obj['name']!r}: apply.yml drops {sorted(set(obj) - passed)}"
    listed = {k for k in objects() if isinstance(objects()[k], list) and k != "exchpatch_awx_credential_type_files"}
    assert listed <= set(MODULES), f"data no task applies: {listed - set(MODULES)}"


def test_every_argument_apply_gives_is_an_option():
    """The task arguments themselves, and the connection defaults, name options of their module."""
    play = yaml.safe_load((AWX / "apply.yml").read_text())[0]
    for task in play["tasks"]:
        module = next((k for k in task if k.startswith("awx.awx.")), None)
        if module:
            unknown = set(task[module]) - set(module_options(module.split(".")[-1]))
            assert not unknown, f"{task['name']}: {sorted(unknown)} are not options of {module}"
    defaults = play["module_defaults"]["group/awx.awx.controller"]
    assert set(defaults) <= set(module_options("job_template")), "connection options every awx.awx module takes"


def test_every_reference_names_an_object_of_awx():
    names = {var: {o["name"] for o in data(var)} for var in MODULES}
    for jt in job_templates():
        assert jt["project"] in names["exchpatch_awx_projects"], jt["name"]
        assert jt["inventory"] in names["exchpatch_awx_inventories"], jt["name"]
        assert jt["execution_environment"] in names["exchpatch_awx_execution_environments"], jt["name"]
        assert set(jt["credentials"]) <= names["exchpatch_awx_credentials"], jt["name"]
    for cred in data("exchpatch_awx_credentials"):
        assert cred["credential_type"] in names["exchpatch_awx_credential_types"], cred["name"]
    for src in data("exchpatch_awx_inventory_sources"):
        assert src["inventory"] in names["exchpatch_awx_inventories"]
        assert src["source_project"] in names["exchpatch_awx_projects"]
        assert src["execution_environment"] in names["exchpatch_awx_execution_environments"]
        assert (REPO / src["source_path"]).is_file(), f"{src['source_path']} is not in the project"
    for project in data("exchpatch_awx_projects"):
        assert project["default_environment"] in names["exchpatch_awx_execution_environments"]
        assert project["scm_update_on_launch"] is True
    for wf in workflows():
        ids = [n["identifier"] for n in wf["workflow_nodes"]]
        assert len(ids) == len(set(ids)), wf["name"]
        for node in wf["workflow_nodes"]:
            ujt = node["unified_job_template"]
            if ujt["type"] == "job_template":
                assert ujt["name"] in names["exchpatch_awx_job_templates"], ujt["name"]
            for linked in (node.get("related") or {}).values():
                assert {n["identifier"] for n in linked} <= set(ids), node["identifier"]


def _edges(wf: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(parent, kind) -> child, with nodes named by job template (or 'approval')."""
    label = {n["identifier"]: (n["unified_job_template"]["name"] if n["unified_job_template"]["type"] == "job_template"
                               else n["unified_job_template"]["type"]) for n in wf["workflow_nodes"]}
    edges = {}
    for node in wf["workflow_nodes"]:
        for kind, linked in (node.get("related") or {}).items():
            for child in linked:
                edges[(label[node["identifier"]], kind)] = label[child["identifier"]]
    return edges


def test_the_workflow_plans_waits_for_approval_and_branches_on_the_rollout():
    playbook = {jt["name"]: jt["playbook"] for jt in job_templates()}
    wf = next(w for w in workflows() if w["name"] == "exchange: patch with approval")
    edges = {(playbook.get(p, p), kind): playbook.get(c, c) for (p, kind), c in _edges(wf).items()}
    assert edges == {
        ("playbooks/plan.yml", "success_nodes"): "workflow_approval",
        ("workflow_approval", "success_nodes"): "playbooks/rolling_patch.yml",
        ("playbooks/rolling_patch.yml", "success_nodes"): "playbooks/fleet_status.yml",
        ("playbooks/rolling_patch.yml", "failure_nodes"): "awx/notify.yml",
        ("playbooks/fleet_status.yml", "success_nodes"): "playbooks/audit.yml",
    }
    nodes = {n["identifier"]: n["unified_job_template"] for n in wf["workflow_nodes"]}
    approval = next(ujt for ujt in nodes.values() if ujt["type"] == "workflow_approval")
    assert isinstance(approval["timeout"], int) and approval["timeout"] > 0, "an approval nobody gives must time out"
    audit = next(n for n in wf["workflow_nodes"]
                 if playbook.get(n["unified_job_template"]["name"]) == "playbooks/audit.yml")
    assert audit["extra_data"] == {"audit_action": "verify"}
    assert wf["allow_simultaneous"] is False


def test_changing_templates_never_run_twice_at_once():
    for jt in job_templates():
        changes = jt["playbook"] in ("playbooks/rolling_patch.yml", "playbooks/rollback.yml")
        assert jt["allow_simultaneous"] is (not changes), jt["name"]
        assert jt.get("ask_variables_on_launch") is False, f"{jt['name']}: free extra vars bypass the survey"
        assert jt.get("ask_limit_on_launch", False) is False or not changes, f"{jt['name']}: a limit skips nodes"
        assert "preflight_operator" not in (jt.get("extra_vars") or {}), jt["name"]


def test_every_playbook_exists_and_passes_syntax_check(tmp_path):
    """With the project's ansible.cfg, from the project's root, as AWX runs them (the collection resolves
    through collections/, where `make setup` links this checkout and AWX's project sync installs it)."""
    books = sorted({jt["playbook"] for jt in job_templates()} | {"awx/apply.yml"})
    for book in books:
        assert (REPO / book).is_file(), book
    res = ansible_playbook(["--syntax-check", *books], REPO / "ansible.cfg", cwd=REPO,
                           EXCHPATCH_AUDIT_FILE=str(tmp_path / "audit.jsonl"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("playbook: ") == len(books), res.stdout


# --- the apply playbook against an AWX that has nothing yet --------------------------------------------


class EmptyAwx(BaseHTTPRequestHandler):
    """An AWX API with no object at all: every list is empty. Records every request."""

    requests: list[tuple[str, str]]

    def _answer(self) -> None:
        self.requests.append((self.command, self.path))
        body = json.dumps({"count": 0, "next": None, "previous": None, "results": []}).encode()
        self.send_response(200)
        for header, value in (("Content-Type", "application/json"), ("X-API-Product-Name", "AWX"),
                              ("X-API-Product-Version", "24.6.1"), ("Content-Length", str(len(body)))):
            self.send_header(header, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def empty_awx():
    handler = type("Handler", (EmptyAwx,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()


SECRETS = {
    "EXCHPATCH_AWX_ADMIN_TOKENS_FILE": "me-fra1-s0-a: tok-7f3a9c1e5b2d4f60a8e9\n",
    "EXCHPATCH_AWX_RELEASE_PUBKEY_FILE": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAq1w2e3r4t5y6u7i8o9p0\n"
                                         "-----END PUBLIC KEY-----\n",
    "EXCHPATCH_AWX_STATE_STORE_DSN_FILE": "postgresql://exchpatch_writer:pw-5d8e2a7c9b1f@db.example/exchpatch\n",
    "EXCHPATCH_AWX_AUDIT_KEY_FILE": "audit-key-0c6b9e2f4a8d1357\n",
    "EXCHPATCH_AWX_NOTIFY_WEBHOOK_URL_FILE": "https://hooks.example/services/T0/B0/hook-3e9a7c5b\n",
}


def _secret_files(tmp_path: Path, names: tuple[str, ...] = tuple(SECRETS)) -> dict[str, str]:
    env = {}
    for name in names:
        path = tmp_path / name.lower()
        path.write_text(SECRETS[name])
        path.chmod(0o600)
        env[name] = str(path)
    return env


def _apply(url: str, config: Path, **env: str):
    return ansible_playbook(["awx/apply.yml", "--check"], config, cwd=REPO, CONTROLLER_HOST=url,
                            CONTROLLER_OAUTH_TOKEN="token-for-the-empty-awx",
                            EXCHPATCH_AWX_SCM_URL="https://git.example/exchangeops/patching.git",
                            EXCHPATCH_AWX_EE_IMAGE="registry.example/exchangeops-patching-ee:0.1.0", **env)


def test_apply_in_check_mode_changes_nothing_and_logs_no_secret(empty_awx, bare_config, tmp_path):
    url, requests = empty_awx
    res = _apply(url, bare_config, **_secret_files(tmp_path))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    # every object would be created: each awx.awx task reports a change for each of its items
    for task in _apply_tasks():
        module = next((k for k in task if k.startswith("awx.awx.")), None)
        if module and "when" not in task:
            block = out.split(f"TASK [{task['name']}]")[1].split("TASK [")[0]
            assert "changed: [localhost]" in block and "ok: [localhost]" not in block, block
    assert requests, "the modules never asked the AWX"
    methods = {method for method, path in requests}
    assert methods == {"GET"}, f"check mode sent {sorted(methods - {'GET'})}"
    # each object after these needs the organization the first task would create, and stops at its lookup
    asked = {re.match(r"/api/v2/(\w+)/", path).group(1) for method, path in requests}
    assert asked >= {"organizations", "credential_types"}, asked
    for secret in SECRETS.values():
        for line in secret.strip().splitlines():
            if len(line) > 12:
                assert line not in out, "a secret reached the output"
                assert all(line not in path for method, path in requests), "a secret reached a query"


def test_apply_refuses_a_credential_with_some_of_its_secrets(empty_awx, bare_config, tmp_path):
    url, requests = empty_awx
    res = _apply(url, bare_config, **_secret_files(tmp_path, ("EXCHPATCH_AWX_ADMIN_TOKENS_FILE",)))
    assert res.returncode != 0
    assert "credential exchange control: give a file for every required input" in res.stdout
    assert "missing: release_pubkey, state_store_dsn, audit_key" in res.stdout
    assert requests == [], "nothing is asked of AWX before the settings are right"


def test_apply_names_the_settings_it_misses(empty_awx, bare_config):
    url, requests = empty_awx
    res = ansible_playbook(["awx/apply.yml", "--check"], bare_config, cwd=REPO, CONTROLLER_HOST=url)
    assert res.returncode != 0
    assert "EXCHPATCH_AWX_SCM_URL" in res.stdout and "EXCHPATCH_AWX_EE_IMAGE" in res.stdout
    assert requests == []
