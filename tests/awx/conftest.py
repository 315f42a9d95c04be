"""What the tests of awx/ share: the objects as AWX receives them (the YAML under awx/), the playbooks' entry
points (roles/run_contract/meta/argument_specs.yml), the awx.awx modules' own documentation (``ansible-doc
--json``, from the ansible package) and a way to run ansible-playbook without this checkout's callbacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
AWX = REPO / "awx"
BIN = Path(sys.executable).parent
ARGUMENT_SPECS = REPO / "roles" / "run_contract" / "meta" / "argument_specs.yml"


def load(name: str) -> Any:
    return yaml.safe_load((AWX / name).read_text())


def objects() -> dict[str, Any]:
    """Every variable of awx/vars/*.yml (the apply playbook's data), by name."""
    data: dict[str, Any] = {}
    for path in sorted((AWX / "vars").glob("*.yml")):
        data.update(yaml.safe_load(path.read_text()) or {})
    return data


def job_templates() -> list[dict[str, Any]]:
    return objects()["exchpatch_awx_job_templates"]


def workflows() -> list[dict[str, Any]]:
    return objects()["exchpatch_awx_workflow_job_templates"]


def entry_points() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(ARGUMENT_SPECS.read_text())["argument_specs"]


def stem(playbook: str) -> str | None:
    """The entry point of a job template's playbook: playbooks/<stem>.yml; None for a playbook elsewhere."""
    path = Path(playbook)
    return path.stem if path.parent == Path("playbooks") else None


def surveyed() -> list[tuple[str, dict[str, Any], str | None, dict[str, Any]]]:
    """(name, survey spec, entry point, fixed extra vars) of every survey: each job template's, and the
    workflow's for each of its job template nodes that asks the same questions (a workflow's answers reach
    every job of the workflow; the rolling patch node is the one they are for)."""
    out = []
    by_name = {jt["name"]: jt for jt in job_templates()}
    for jt in job_templates():
        if jt.get("survey_spec"):
            out.append((jt["name"], jt["survey_spec"], stem(jt["playbook"]), jt.get("extra_vars") or {}))
    for wf in workflows():
        asked = {q["variable"] for q in (wf.get("survey_spec") or {}).get("spec", [])}
        for node in wf.get("workflow_nodes", []):
            jt = by_name.get(node["unified_job_template"]["name"])
            if jt and asked & {q["variable"] for q in (jt.get("survey_spec") or {}).get("spec", [])}:
                fixed = {**(jt.get("extra_vars") or {}), **(node.get("extra_data") or {})}
                out.append((f"{wf['name']} -> {jt['name']}", wf["survey_spec"], stem(jt["playbook"]), fixed))
    return out


@cache
def module_options(module: str) -> dict[str, dict[str, Any]]:
    """The options of awx.awx.<module> as its documentation states them (aliases included, each naming the
    same option), from the awx.awx collection the ansible package ships."""
    res = subprocess.run([str(BIN / "ansible-doc"), "--json", f"awx.awx.{module}"], capture_output=True,
                         text=True, timeout=120, env=plain_env(), check=False)
    assert res.returncode == 0, f"ansible-doc awx.awx.{module}: {res.stderr[-2000:]}"
    return options_with_aliases(json.loads(res.stdout)[f"awx.awx.{module}"]["doc"]["options"])


def options_with_aliases(options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = dict(options)
    for spec in options.values():
        for alias in spec.get("aliases") or []:
            out[alias] = spec
    return out


def plain_env(**extra: str) -> dict[str, str]:
    """This environment without Ansible or exchpatch settings (make exports ANSIBLE_CONFIG)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "EXCHPATCH_", "CONTROLLER_"))}
    return {**env, **extra}


@pytest.fixture(scope="session")
def bare_config(tmp_path_factory) -> Path:
    """An ansible.cfg with none of the checkout's callbacks (the audit trail, the lease) and no inventory."""
    path = tmp_path_factory.mktemp("awx-cfg") / "ansible.cfg"
    path.write_text("[defaults]\nretry_files_enabled = False\ninventory = localhost,\n")
    return path


def ansible_playbook(args: Sequence[str | Path], config: Path, cwd: Path = REPO, timeout: float = 300,
                     **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ansible-playbook"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False,
                          env=plain_env(ANSIBLE_CONFIG=str(config), ANSIBLE_NOCOLOR="1", **env))
