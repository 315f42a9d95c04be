"""Hostile input at the driver's boundary: every option of every CLI command and every argument
of every API entry point, given a payload that would run a command if anything templated it.

Two layers, each proven on its own:
- the boundary refuses template markers (exit 2 / BadInput) before any job or file is made;
- with the boundary switched off, the values still reach the playbooks as data: ansible-core
  gets them from a private ``!unsafe`` extra-vars file and renders none of them.
The playbooks run for real through ansible-runner (no fleet is needed for these).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import stat
from pathlib import Path

import pytest

from exchpatch import api, cli, jobs

MARKER = "exchpatch-owned"
# `cd && touch NAME` creates $HOME/NAME: no slash, so the payload can also be a file's name.
PAYLOAD = "{{ lookup('pipe', 'cd && touch " + MARKER + "') }}"
OTHER_MARKERS = ["x{% if true %}y{% endif %}", "x{# comment #}", "#jinja2: variable_start_string:'[['\n[[ 1 ]]"]


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """HOME (where the payload would write), the driver's data dir and a testbed dir, all private."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("EXCHPATCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EXCHPATCH_TESTBED_DIR", str(tmp_path / "testbed"))
    monkeypatch.setenv("EXCHPATCH_AUDIT_FILE", str(tmp_path / "audit.jsonl"))
    (tmp_path / "catalog").mkdir()
    (tmp_path / "feed.json").write_text("{}")
    return tmp_path


def _no_trace(sandbox: Path) -> None:
    assert not (sandbox / "home" / MARKER).exists(), "the payload ran"
    runs = sandbox / "data" / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a job was started"
    assert not (sandbox / "testbed").exists(), "the testbed was touched"


# --------------------------------------------------------------------------- the CLI, every option

def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(argv prefix, leaf parser) for every command, walking the sub-commands."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _commands(sub, (*prefix, name))


# Valid values for the options each command requires, so only the option under test is hostile.
REQUIRED = {
    ("plan",): ["--feed", "{feed}", "--catalog", "{catalog}"],
    ("deploy",): ["matching-engine-1.4.3"],
    ("rollback",): ["--component", "matching-engine"],
    ("testbed", "release"): ["--component", "matching-engine", "--version", "1.4.3"],
    ("testbed", "load"): ["--rate", "1", "--duration", "1"],
    ("testbed", "kill"): ["match-0a"],
    ("testbed", "promote"): ["match-0a"],
    ("approve",): ["--kind", "emergency", "--patch", "matching-engine-1.4.3", "--operator", "alice", "--reason", "r",
                   "--valid-for", "2h", "--key", "id_ed25519"],
    ("audit", "export"): ["--output", "{catalog}/export.jsonl"],
}


def _cases():
    parser = cli.build_parser()
    for prefix, leaf in _commands(parser):
        for action in leaf._actions:
            if action.nargs == 0 or isinstance(action, argparse._HelpAction):
                continue  # flags take no text
            yield pytest.param(prefix, action, id=" ".join(prefix) + " " + (action.option_strings or [action.dest])[-1])
    # options that belong to a parent parser ("testbed --root")
    for action in _subparser(parser, "testbed")._actions:
        if action.dest == "root":
            yield pytest.param(("testbed", "status"), action, id="testbed --root")


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def _argv(prefix: tuple[str, ...], action: argparse.Action, value: str, sandbox: Path) -> list[str]:
    base = [v.format(feed=sandbox / "feed.json", catalog=sandbox / "catalog") for v in REQUIRED.get(prefix, [])]
    if action.dest == "root":
        return ["testbed", "--root", value, *prefix[1:], "--json"]
    if not action.option_strings:  # positional: the hostile value takes the required one's place
        base = [v for v in base if v not in ("matching-engine-1.4.3", "match-0a")]
        return [*prefix, value, *base, "--json"]
    if action.option_strings[-1] in base:  # a required option: replace its value
        i = base.index(action.option_strings[-1])
        base[i + 1] = value
        return [*prefix, *base, "--json"]
    return [*prefix, *base, action.option_strings[-1], value, "--json"]


@pytest.mark.parametrize(("prefix", "action"), list(_cases()))
def test_cli_option_refuses_a_template(prefix, action, sandbox, capsys):
    argv = _argv(prefix, action, PAYLOAD, sandbox)
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse itself refused it (a choice or a number): also exit 2
        rc = e.code
    out = capsys.readouterr()
    assert rc == 2, (argv, out)
    _no_trace(sandbox)
    if action.choices is None and action.type is None:  # our refusal, not argparse's: one clear line
        assert "template marker" in out.err and out.err.count("\n") == 1, out.err


def test_cli_covers_every_command():
    """The parametrisation above walks the parser: a new command or option is covered by itself."""
    names = {" ".join(p.values[0]) for p in _cases()}
    assert {"plan", "deploy", "rollback", "status", "history", "metrics", "report", "audit verify",
            "testbed up", "testbed release", "testbed load"} <= names


@pytest.mark.parametrize("payload", OTHER_MARKERS)
def test_cli_refuses_every_kind_of_marker(payload, sandbox, capsys):
    rc = cli.main(["deploy", "matching-engine-1.4.3", "--emergency", "--reason", payload,
                   "--json"])
    assert rc == 2
    assert "template marker" in capsys.readouterr().err
    _no_trace(sandbox)


# --------------------------------------------------------------------------- the API, every argument

def _api_cases():
    entry = {
        api.plan: {"feeds": ["{feed}"], "catalog": "{catalog}"},
        api.deploy: {"patch_id": "matching-engine-1.4.3"},
        api.rollback: {"component": "matching-engine"},
        api.status: {},
        api.audit: {"action": "history"},
    }
    for func, base in entry.items():
        for name in inspect.signature(func).parameters:
            if name.endswith("handler"):
                continue
            yield pytest.param(func, base, name, id=f"{func.__name__}({name})")


@pytest.mark.parametrize(("func", "base", "name"), list(_api_cases()))
def test_api_argument_refuses_a_template(func, base, name, sandbox):
    kwargs = {k: ([x.format(feed=sandbox / "feed.json") for x in v] if isinstance(v, list)
                  else v.format(catalog=sandbox / "catalog")) for k, v in base.items()}
    kwargs[name] = [PAYLOAD] if name in ("feeds", "serial") else PAYLOAD
    with pytest.raises(api.BadInput, match="template marker"):
        func(**kwargs)
    _no_trace(sandbox)


def test_an_unknown_inconclusive_policy_is_refused_naming_the_choices(sandbox):
    with pytest.raises(api.BadInput, match=r"on_inconclusive 'maybe' is not valid; use halt .* fail .* proceed"):
        api.deploy("matching-engine-1.4.3", on_inconclusive="maybe")
    _no_trace(sandbox)


# --------------------------------------------------------------------------- executable files are opt-in

def _script(path: Path) -> Path:
    path.write_text(f"#!/bin/sh\ncd && touch {MARKER}\necho pass\n")
    path.chmod(0o700)
    return path


def test_an_executable_vault_password_file_needs_an_opt_in(sandbox):
    script = _script(sandbox / "vault-pass")
    for call in (api.status, functools.partial(api.rollback, "matching-engine"),
                 functools.partial(api.deploy, "matching-engine-1.4.3")):
        with pytest.raises(api.BadInput, match="allow_vault_password_script"):
            call(vault_password_file=str(script))
    _no_trace(sandbox)
    script.chmod(0o600)  # a plain password file is fine: the refusal is about running it
    assert not os.access(script, os.X_OK)


def test_an_executable_inventory_needs_an_opt_in(sandbox):
    inv = sandbox / "inv"
    inv.mkdir()
    (inv / "hosts.yml").write_text("all:\n  hosts: {}\n")
    (inv / "group_vars").mkdir()
    (inv / "group_vars" / "all.yml").write_text("x: 1\n")
    api.status(inventory=str(inv)).wait()  # a static inventory is accepted
    _script(inv / "dynamic.sh")
    with pytest.raises(api.BadInput, match="allow_inventory_scripts"):
        api.status(inventory=str(inv))
    with pytest.raises(api.BadInput, match="allow_inventory_scripts"):
        api.plan([str(sandbox / "feed.json")], str(sandbox / "catalog"), inventory=str(inv / "dynamic.sh"))
    assert not (sandbox / "home" / MARKER).exists()


# --------------------------------------------------------------------------- second layer: !unsafe

@pytest.fixture
def boundary_off(monkeypatch):
    """Switch the marker check off, to prove the playbooks would not template the values anyway."""
    monkeypatch.setattr(jobs, "refuse_template_markers", lambda *a, **k: None)
    monkeypatch.setattr(api, "refuse_template_markers", lambda *a, **k: None)


def test_values_reach_the_playbooks_as_data(sandbox, boundary_off):
    # files and folders really named with the payload, so every path check passes
    hostile = sandbox / PAYLOAD
    hostile.mkdir()
    feed = hostile / PAYLOAD
    feed.write_text("{}")
    load = sandbox / ("load-" + PAYLOAD)
    load.write_text("{}")
    runs = [
        api.audit("history", audit_file=str(hostile / "audit.jsonl")),
        api.audit("report", audit_file=str(hostile / "audit.jsonl"), load_report=str(load),
                  dest=str(hostile / "report.html")),
        api.plan([str(feed)], str(hostile), facts=str(feed), now="2026-11-30T00:00:00Z"),
        api.deploy("matching-engine-1.4.3", catalog=str(hostile), reason=PAYLOAD, operator="alice",
                   inventory=str(Path(api.__file__).parent / "empty_inventory.yml")),
    ]
    results = [job.wait(timeout=300) for job in runs]
    assert not (sandbox / "home" / MARKER).exists(), "a value was templated"
    assert results[0].exit_code == 0 and results[0].data["file"] == str(hostile / "audit.jsonl")
    assert results[3].exit_code != 0  # the catalog has no such patch; nothing ran, nothing was templated
    # the extra vars never travel on the command line, and their file is private and tagged
    for job in runs:
        run_dir = sandbox / "data" / "runs" / job.id
        extravars = run_dir / "env" / "extravars"
        assert stat.S_IMODE(extravars.stat().st_mode) == 0o600
        assert "!unsafe" in extravars.read_text()
        command = (run_dir / "artifacts" / job.id / "command").read_text()
        assert PAYLOAD not in command.replace("\\'", "'")


def test_the_playbook_environment_is_pruned_and_its_record_scrubbed(sandbox, monkeypatch):
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "s3cr3t-signing")
    monkeypatch.setenv("EXCHPATCH_STATE_DSN", "postgresql://exch:pg-pass-42@127.0.0.1/exch")
    monkeypatch.setenv("https_proxy", "http://proxyuser:proxy-pass-7@127.0.0.1:3128")
    job = api.audit("history")
    job.wait(timeout=120)
    record = (sandbox / "data" / "runs" / job.id / "artifacts" / job.id / "command").read_text()
    for secret in ("s3cr3t-signing", "pg-pass-42", "proxy-pass-7"):
        assert secret not in record
    assert "SLACK_SIGNING_SECRET" not in record and "EXCHPATCH_STATE_DSN" not in record
    assert "proxyuser:<redacted>@" in record  # kept for the playbook, redacted in the record


def test_redaction_of_url_credentials_and_secret_keys():
    assert jobs.redact_text("GET https://u:p4ss@node/v1 failed") == "GET https://u:<redacted>@node/v1 failed"
    assert jobs.redact({"token": "abc", "nested": [{"db_dsn": "x", "ok": "postgresql://a:b@h/d"}]}) == {
        "token": "<redacted>", "nested": [{"db_dsn": "<redacted>", "ok": "postgresql://a:<redacted>@h/d"}]}
    # the same names as the collection's rule: the change record's author and approver stay readable
    assert jobs.redact({"author": "alice", "authorization": "Bearer x", "ansible_become_pass": "p"}) == {
        "author": "alice", "authorization": "<redacted>", "ansible_become_pass": "<redacted>"}
