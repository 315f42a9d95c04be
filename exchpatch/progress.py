"""Live progress for people: one line per batch and per thing done to a node.

Subscribed to a job's events (``job.on_event(Progress(stream))``). It shows the plays (the
batches), every change made to a node (drain, switch, restart, step-down, promote, resume),
every failure, and every health gate with its evidence, and stays quiet about reads.
"""

from __future__ import annotations

import re
import sys
from typing import IO, Any

from exchpatch.jobs import Job, JobEvent

# Tasks worth a line even when they changed nothing: gates, verification, locks, switchovers.
_NOTABLE = re.compile(r"gate|verify|converg|lock|switch|promote|step.?down|drain|pause|resume|canary|baseline"
                      r"|rolled? back|refuse", re.IGNORECASE)


class Progress:
    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self._play: str | None = None

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __call__(self, job: Job, e: JobEvent) -> None:
        if e.event == "playbook_on_play_start":
            self._play = e.play
            self._print(f"\n== {e.play}")
            return
        if e.event not in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable") or not e.task:
            return
        if e.task.startswith("Validating arguments against arg spec") or "include" in e.res:
            return  # role argument validation and include_tasks/include_role markers: not a step
        gates = e.res.get("gates") if isinstance(e.res.get("gates"), list) else []
        if e.event == "runner_on_ok" and not e.changed and not gates and not _NOTABLE.search(e.task):
            return
        if e.event == "runner_on_failed" and e.ignored:
            return
        state = {"runner_on_failed": "FAILED", "runner_on_unreachable": "UNREACHABLE"}.get(
            e.event, "changed" if e.changed else "ok")
        when = e.created[11:19] if len(e.created) >= 19 else ""
        line = f"  {when} {e.host or '-':<10} {state:<8} {e.task}"
        if e.failed and e.msg:
            line += f"\n{'':22}{_short(e.msg, 400)}"
        self._print(line)
        for g in gates:
            mark = "pass" if g.get("passed") else "FAIL"
            self._print(f"{'':22}[{mark}] {g.get('name')}: {_short(str(g.get('evidence', '')), 200)}")


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary_lines(result: Any) -> list[str]:
    """A closing summary of a deploy or rollback result."""
    out = []
    nodes: dict[str, list[str]] = {}
    for step in result.steps:
        if step.status in ("changed", "failed", "unreachable"):
            nodes.setdefault(step.host, []).append(step.status)
    for host, states in sorted(nodes.items()):
        failed = any(s != "changed" for s in states)
        out.append(f"  {host:<10} {'FAILED' if failed else 'changed'} ({len(states)} steps)")
    return out
