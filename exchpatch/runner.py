"""Run the collection's playbooks through ansible-runner.

The driver never imports collection code: the contract is a playbook name plus validated
extra variables, and what comes back is ansible-runner's status and events.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_INVENTORY = REPO / "inventories" / "testbed"


KEEP_RUNS = 20


def data_dir() -> Path:
    """The driver's working folder: outside the repository, per user."""
    base = os.environ.get("EXCHPATCH_DATA_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "exchpatch")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _private_data_dir(ident: str) -> Path:
    """A fresh ansible-runner private data dir per run (ansible-runner keeps env/extravars
    from an earlier run in a shared one); only the newest KEEP_RUNS are kept."""
    runs = data_dir() / "runs"
    runs.mkdir(exist_ok=True, mode=0o700)
    old = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for stale in old[:max(0, len(old) - KEEP_RUNS + 1)]:
        shutil.rmtree(stale, ignore_errors=True)
    path = runs / ident
    path.mkdir(mode=0o700)
    return path


@dataclass
class Failure:
    host: str
    task: str
    msg: str
    bad_input: bool = False


@dataclass
class PlaybookResult:
    status: str  # successful | failed | timeout | canceled
    rc: int
    failures: list[Failure] = field(default_factory=list)
    artifacts: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0


def run_playbook(playbook: str, extravars: dict[str, Any], inventory: str | Path | None = None,
                 ident: str | None = None, quiet: bool = True) -> PlaybookResult:
    """Run ``playbooks/<playbook>`` and collect its failures (task, host, message)."""
    import ansible_runner

    bindir = os.path.dirname(sys.executable)
    env = {
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_NOCOLOR": "1",
    }
    ident = ident or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    runner = ansible_runner.run(
        private_data_dir=str(_private_data_dir(ident)),
        project_dir=str(REPO),
        playbook=str(Path("playbooks") / playbook),
        inventory=str(inventory or DEFAULT_INVENTORY),
        extravars=extravars,
        envvars=env,
        ident=ident,
        quiet=quiet,
    )
    failures = []
    for ev in runner.events:
        if ev.get("event") not in ("runner_on_failed", "runner_on_unreachable"):
            continue
        data = ev.get("event_data", {})
        if data.get("ignore_errors"):
            continue
        res = data.get("res") or {}
        failures.append(Failure(
            host=data.get("host", "?"),
            task=data.get("task", "?"),
            msg=str(res.get("msg") or res.get("reason") or "failed"),
            bad_input=bool(res.get("bad_input")),
        ))
    return PlaybookResult(status=runner.status, rc=runner.rc, failures=failures,
                          artifacts=str(getattr(runner.config, "artifact_dir", "")))
