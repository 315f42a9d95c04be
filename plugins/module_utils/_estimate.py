# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""How long a rolling patch needs, from its real plan: the budget the market calendar checks.

The plan mirrors ``playbooks/rolling_patch.yml``: the canary (the first matching standby) alone, then the canary
shard handed over to it and baked under client traffic; the other standbys in batches of ``serial[1:]`` (or
``serial``), with the canary shard's old primary among them (the handover made it a standby); the other primaries in
batches of ``serial``, each after a switchover (step-down, promote its patched standby, gate it under traffic); the
wallet nodes one at a time (pause withdrawals, let in-flight signing finish), the first with the canary bake. Nodes
of one batch run in parallel; batches, phases and wallets follow each other. The plan gives counts, not which shard's
primary is pending: when the canary's is not (a rerun), the run patches one more primary and one standby fewer, so
the estimate is the longer of the two ways.

Every step is budgeted at its limit, not its typical time: a node's restart estimate, then its health gate up to
its timeout, then its bake. The result is the longest a run that passes every gate takes, so a window the run could
reach is never missed. ``progress`` (a phase and how many of its nodes are done) trims the plan to the work left,
for the check before every batch. Pure and clock-free; bad input raises :class:`PlanError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PHASES = ("canary", "canary_switchover", "standbys", "primaries", "wallets")
DEFAULT_SERIAL: tuple[int | str, ...] = (1, 2, "50%")


class PlanError(ValueError):
    """A bad plan or progress; ``str()`` names the field, the value and the fix."""


@dataclass(frozen=True)
class Plan:
    """The whole run: pending nodes by role, batch sizes, and the time limits of each step (seconds)."""

    standbys: int = 0  # pending matching standbys, the canary included (it is the first one)
    primaries: int = 0
    wallets: int = 0
    serial: tuple[int | str, ...] = DEFAULT_SERIAL
    canary_bake: int = 10  # rolling_canary_bake
    bake: int = 0  # rolling_bake
    traffic_bake: int = 5  # matching_node_traffic_bake: a promoted standby gated under client traffic
    gate_timeout: int = 60  # health_gate's timeout (matching_node_gate_timeout, wallet_node_gate_timeout)
    switchover_timeout: int = 30  # matching_node_switchover_timeout
    in_flight_timeout: int = 30  # wallet_node_in_flight_timeout
    seconds_per_node: int = 45  # restart estimate: drain, install, switch, restart, until the gate starts

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "serial": list(self.serial)}


@dataclass(frozen=True)
class Step:
    """One phase of the run: its nodes, batch sizes and seconds, with the sum spelled out."""

    phase: str
    nodes: int
    batches: tuple[int, ...]
    seconds: int
    formula: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "batches": list(self.batches)}


@dataclass(frozen=True)
class Estimate:
    """The budget of the work left, phase by phase."""

    plan: Plan
    phase: str
    done: int
    steps: tuple[Step, ...] = field(default=())

    @property
    def seconds(self) -> int:
        return sum(s.seconds for s in self.steps)

    @property
    def nodes(self) -> int:
        return sum(s.nodes for s in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "nodes": self.nodes, "progress": {"phase": self.phase, "done": self.done},
                "steps": [s.as_dict() for s in self.steps], "plan": self.plan.as_dict()}


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PlanError(f"plan.{name}: must be a whole number of zero or more (got {value!r})")
    return value


def parse_serial(value: Any) -> tuple[int | str, ...]:
    """``[1, 2, "50%"]`` as Ansible's ``serial`` reads it: sizes or percentages of the play's hosts."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise PlanError("plan.serial: is empty; give batch sizes like [1, 2, \"50%\"] (the playbook's default)")
    out: list[int | str] = []
    for item in items:
        text = str(item).strip() if not isinstance(item, bool) else ""
        number = text[:-1] if text.endswith("%") else text
        if not number.isdigit() or int(number) < 1 or (text.endswith("%") and int(number) > 100):
            raise PlanError(f"plan.serial: {item!r} is not a batch size; write a whole number from 1, or a "
                            "percentage from 1% to 100% of the play's nodes, like [1, 2, \"50%\"]")
        out.append(text if text.endswith("%") else int(number))
    return tuple(out)


def make_plan(**values: Any) -> Plan:
    """A :class:`Plan` from option values (``None`` takes the default); PlanError naming a bad one."""
    given = {k: v for k, v in values.items() if v is not None}
    unknown = sorted(set(given) - set(Plan.__dataclass_fields__))
    if unknown:
        raise PlanError(f"plan: unknown field {', '.join(unknown)}; the fields are "
                        f"{', '.join(Plan.__dataclass_fields__)}")
    if "serial" in given:
        given["serial"] = parse_serial(given["serial"])
    for name, value in given.items():
        if name != "serial":
            _count(name, value)
    return Plan(**given)


def batch_sizes(count: int, serial: Sequence[int | str]) -> list[int]:
    """How Ansible splits ``count`` hosts by ``serial``: percentages of the whole play, the last size repeating."""
    sizes: list[int] = []
    left = count
    index = 0
    while left > 0:
        item = serial[index]
        size = (int(int(item[:-1]) / 100.0 * count) or 1) if isinstance(item, str) else int(item)
        sizes.append(min(size, left))
        left -= size
        index = min(index + 1, len(serial) - 1)
    return sizes


def _left(sizes: list[int], done: int) -> list[int]:
    """The batches left once ``done`` nodes are patched; a batch only partly done counts as left, whole."""
    start = 0
    for index in range(len(sizes) + 1):
        if sum(sizes[:index]) <= done:
            start = index
    return sizes[start:]


def _batches(sizes: list[int]) -> str:
    return f"{len(sizes)} batch" if len(sizes) == 1 else f"{len(sizes)} batches"


def estimate_run(plan: Plan, phase: str = "canary", done: int = 0) -> Estimate:
    """The time the work left needs, from the batch of ``phase`` after ``done`` of its nodes; PlanError when odd."""
    if phase not in PHASES:
        raise PlanError(f"progress.phase: {phase!r} is not a phase; use one of {', '.join(PHASES)}")
    _count("progress.done", done)
    # the canary shard's primary, a standby once the canary took over, is patched in the standbys phase
    ways = {moved: _totals(plan, moved) for moved in (1 if plan.standbys and plan.primaries else 0, 0)}
    most = max(t[phase] for t in ways.values())
    if done > most or (phase.startswith("canary") and done):
        raise PlanError(f"progress.done: {done} nodes of the {phase} phase are done but it has {most}; "
                        "count only the nodes of this phase patched by earlier batches")
    return max((_estimate(plan, phase, done, totals) for totals in ways.values() if done <= totals[phase]),
               key=lambda e: e.seconds)


def _totals(plan: Plan, moved: int) -> dict[str, int]:
    """Nodes per phase, with ``moved`` primaries (0 or 1) patched in the standbys phase."""
    return {"canary": min(plan.standbys, 1), "canary_switchover": min(plan.standbys, 1),
            "standbys": max(plan.standbys - 1, 0) + moved, "primaries": plan.primaries - moved,
            "wallets": plan.wallets}


def _estimate(plan: Plan, phase: str, done: int, totals: dict[str, int]) -> Estimate:
    """estimate_run for one way of splitting the nodes into phases (``totals``)."""
    position = PHASES.index(phase)
    p = plan
    node = p.seconds_per_node + p.gate_timeout
    node_text = f"restart {p.seconds_per_node} s + gate up to {p.gate_timeout} s"
    switch = p.switchover_timeout + p.gate_timeout
    switch_text = f"switchover up to {p.switchover_timeout} s + traffic gate up to {p.gate_timeout} s"
    steps: list[Step] = []
    if position <= 0 and totals["canary"]:
        steps.append(Step("canary", 1, (1,), node + p.canary_bake, f"{node_text} + canary bake {p.canary_bake} s"))
    # the canary's shard is handed over to it when its primary is pending too
    if position <= 1 and totals["canary"] and p.primaries:
        steps.append(Step("canary_switchover", 0, (), switch + p.canary_bake,
                          f"{switch_text} + canary bake {p.canary_bake} s"))
    if position <= 2 and totals["standbys"]:
        sizes = _left(batch_sizes(totals["standbys"], p.serial[1:] or p.serial), done if phase == "standbys" else 0)
        if sizes:
            steps.append(Step("standbys", sum(sizes), tuple(sizes), len(sizes) * (node + p.bake),
                              f"{_batches(sizes)} × ({node_text} + bake {p.bake} s)"))
    if position <= 3 and totals["primaries"]:
        sizes = _left(batch_sizes(totals["primaries"], p.serial), done if phase == "primaries" else 0)
        if sizes:
            each = switch + p.traffic_bake + node + p.bake
            steps.append(Step("primaries", sum(sizes), tuple(sizes), len(sizes) * each,
                              f"{_batches(sizes)} × ({switch_text} + traffic bake {p.traffic_bake} s + "
                              f"{node_text} + bake {p.bake} s)"))
    wallets = p.wallets - (done if phase == "wallets" else 0)
    if wallets:
        first_is_canary = phase != "wallets" or done == 0
        bakes = p.canary_bake + p.bake * (wallets - 1) if first_is_canary else p.bake * wallets
        bake_text = (f"canary bake {p.canary_bake} s for the first, bake {p.bake} s for each other" if first_is_canary
                     else f"bake {p.bake} s each")
        steps.append(Step("wallets", wallets, (1,) * wallets, wallets * (p.in_flight_timeout + node) + bakes,
                          f"{wallets} × (in-flight signing up to {p.in_flight_timeout} s + {node_text}) + "
                          f"{bake_text}"))
    return Estimate(plan, phase, done, tuple(steps))
