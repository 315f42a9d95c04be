"""The credential types of awx/: every secret input is marked secret, every injector renders an input
that exists (as AWX renders them: sandboxed Jinja2, files named by tower.filename.<id>), every input
reaches the job, and the names the injectors give are the ones the project reads (the run contract of
issue 11: the example inventory, the state store, the audit callback, the notify step)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tests.awx.conftest import AWX, REPO, load, objects

JINJA = ImmutableSandboxedEnvironment()

CONTROL = "credential_type_exchange_control.yml"
NOTIFY = "credential_type_exchange_notify.yml"
TYPE_FILES = objects()["exchpatch_awx_credential_type_files"]
# Inputs that are not secrets: the release signing key is a public key.
PUBLIC = {"release_pubkey"}
# The injectors the run contract names (docs/awx.md): what each input becomes in the job.
CONTRACT = {
    CONTROL: {
        "extra_vars": {"exchange_admin_tokens": "{{ admin_tokens }}",
                       "exchange_release_pubkey": "{{ release_pubkey }}"},
        "env": {"EXCHPATCH_STATE_STORE": "postgresql", "EXCHPATCH_STATE_STORE_DSN": "{{ state_store_dsn }}",
                "EXCHPATCH_AUDIT_KEY_FILE": "{{ tower.filename.audit_key }}"},
        "file": {"template.audit_key": "{{ audit_key }}"},
    },
    NOTIFY: {"env": {"EXCHPATCH_NOTIFY_WEBHOOK_URL": "{{ webhook_url }}"}},
}
# Where the project reads each injected name: (file, text that must be in it).
READERS = {
    "exchange_admin_tokens": ("inventories/example/group_vars/all/main.yml", "exchange_admin_tokens | from_yaml"),
    "exchange_release_pubkey": ("roles/preflight/tasks/main.yml", ".exchange_release_pubkey"),
    "EXCHPATCH_STATE_STORE": ("plugins/module_utils/_store.py", '"EXCHPATCH_STATE_STORE"'),
    "EXCHPATCH_STATE_STORE_DSN": ("plugins/module_utils/_store.py", '"EXCHPATCH_STATE_STORE_DSN"'),
    "EXCHPATCH_AUDIT_KEY_FILE": ("plugins/module_utils/_audit.py", '"EXCHPATCH_AUDIT_KEY_FILE"'),
    "EXCHPATCH_NOTIFY_WEBHOOK_URL": ("awx/notify.yml", "'EXCHPATCH_NOTIFY_WEBHOOK_URL'"),
}


def test_the_apply_playbook_creates_both_types():
    assert sorted(TYPE_FILES) == sorted([CONTROL, NOTIFY])
    assert load(CONTROL)["name"] == "exchange control" and load(NOTIFY)["name"] == "exchange notify"


@pytest.mark.parametrize("name", TYPE_FILES)
def test_every_secret_input_is_secret(name):
    ctype = load(name)
    assert set(ctype) == {"name", "kind", "inputs", "injectors"}, "name, kind, inputs, injectors: nothing else"
    assert ctype["kind"] == "cloud", "a custom type a job template takes beside others is of kind cloud"
    ids = [f["id"] for f in ctype["inputs"]["fields"]]
    assert len(ids) == len(set(ids)), name
    for field in ctype["inputs"]["fields"]:
        assert field["type"] == "string" and field.get("label") and field.get("help_text"), field["id"]
        if field["id"] in PUBLIC:
            assert not field.get("secret"), f"{field['id']} is public; marked secret it cannot be read back"
        else:
            assert field.get("secret") is True, f"{name}: {field['id']} must be secret: true"
    assert set(ctype["inputs"].get("required", [])) <= set(ids), name


def test_the_control_inputs_are_the_contracts():
    fields = {f["id"]: f for f in load(CONTROL)["inputs"]["fields"]}
    assert list(fields) == ["admin_tokens", "release_pubkey", "state_store_dsn", "audit_key"]
    assert [i for i, f in fields.items() if f.get("multiline")] == ["admin_tokens", "release_pubkey", "audit_key"]
    assert load(CONTROL)["inputs"]["required"] == list(fields), "a job without one of them cannot run"


def _names(template: str) -> set[str]:
    return meta.find_undeclared_variables(JINJA.parse(template))


@pytest.mark.parametrize("name", TYPE_FILES)
def test_every_injector_renders_an_input_that_exists(name):
    ctype = load(name)
    ids = {f["id"] for f in ctype["inputs"]["fields"]}
    injectors = ctype["injectors"]
    assert set(injectors) <= {"extra_vars", "env", "file"}, name
    files = {key.split(".", 1)[1] for key in injectors.get("file", {})}
    assert all(key.startswith("template.") for key in injectors.get("file", {})), "AWX names files template.<id>"
    used: set[str] = set()
    for kind, entries in injectors.items():
        for key, template in entries.items():
            names = _names(template)
            assert names <= ids | {"tower"}, f"{name}: {kind}.{key} renders {names - ids}, not an input"
            for ref in re.findall(r"tower\.filename\.(\w+)", template):
                assert ref in files, f"{name}: {kind}.{key} names a file no file injector writes ({ref})"
            used |= names
    used |= {n for t in injectors.get("file", {}).values() for n in _names(t)}
    assert ids <= used, f"{name}: inputs no injector uses: {ids - used}"
    for var in injectors.get("extra_vars", {}):
        assert not var.startswith(("awx_", "tower_")), "AWX's own variables are not a credential's"


@pytest.mark.parametrize("name", TYPE_FILES)
def test_the_injectors_are_the_contracts(name):
    assert load(name)["injectors"] == CONTRACT[name]


@pytest.mark.parametrize("injected", sorted(READERS))
def test_the_project_reads_what_is_injected(injected):
    path, text = READERS[injected]
    assert text in (REPO / path).read_text(), f"{path} no longer reads {injected}: the credential injects it"


def render(ctype: dict[str, Any], inputs: dict[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """The injectors rendered as AWX renders them: (files by id, env, extra vars)."""
    files = {key.split(".", 1)[1]: JINJA.from_string(t).render(**inputs)
             for key, t in ctype["injectors"].get("file", {}).items()}
    context = {**inputs, "tower": {"filename": {fid: f"/runner/env/cred_{fid}" for fid in files}}}
    env = {k: JINJA.from_string(t).render(**context) for k, t in ctype["injectors"].get("env", {}).items()}
    extra = {k: JINJA.from_string(t).render(**context) for k, t in ctype["injectors"].get("extra_vars", {}).items()}
    return files, env, extra


def test_a_rendered_credential_gives_the_job_what_it_reads():
    inputs = {"admin_tokens": "me-fra1-s0-a: tok-a\nws-fra1-hot-1: tok-w\n",
              "release_pubkey": "-----BEGIN PUBLIC KEY-----\nMCow\n-----END PUBLIC KEY-----\n",
              "state_store_dsn": "postgresql://w:pw@db/exchpatch", "audit_key": "0123456789abcdef0123"}
    files, env, extra = render(load(CONTROL), inputs)
    assert files == {"audit_key": inputs["audit_key"]}
    assert env == {"EXCHPATCH_STATE_STORE": "postgresql", "EXCHPATCH_STATE_STORE_DSN": inputs["state_store_dsn"],
                   "EXCHPATCH_AUDIT_KEY_FILE": "/runner/env/cred_audit_key"}
    # the example inventory reads exchange_admin_tokens | from_yaml, keyed by inventory host name
    assert yaml.safe_load(extra["exchange_admin_tokens"]) == {"me-fra1-s0-a": "tok-a", "ws-fra1-hot-1": "tok-w"}
    assert extra["exchange_release_pubkey"] == inputs["release_pubkey"]


def test_apply_reads_the_types_from_these_files_only():
    """One source: apply.yml loads the files (as data, so Ansible never renders AWX's templates)."""
    apply = (AWX / "apply.yml").read_text()
    assert "query('ansible.builtin.file', *exchpatch_awx_credential_type_files) | map('from_yaml')" in apply
    assert "admin_tokens }}" not in apply and "tower.filename" not in apply
