"""loopback_net: one loopback /16 per user and per xdist worker, clear of the networks others hold."""

from __future__ import annotations

import os
import re

import pytest

from tests.testbed.nodes import NET_BLOCKS, NETS_KEPT_CLEAR, loopback_net


def test_blocks_are_disjoint_usable_and_clear_of_the_networks_others_hold() -> None:
    kept_clear = {octet for octets in NETS_KEPT_CLEAR.values() for octet in octets}
    assert {61, 62, 63} <= kept_clear
    seen: dict[int, str] = {}
    for purpose, block in NET_BLOCKS.items():
        assert len(block) == 10, purpose
        for octet in block:
            assert 1 <= octet <= 254, (purpose, octet)
            assert octet not in kept_clear, (purpose, octet)
            assert octet not in seen, f"{purpose} and {seen.get(octet)} share 127.{octet}.0.0/16"
            seen[octet] = purpose


def test_the_docstring_table_is_the_blocks() -> None:
    rows = re.findall(r"^\s+([a-z-]+)\s+(\d+)-(\d+)\s", loopback_net.__doc__ or "", re.MULTILINE)
    assert {name: range(int(lo), int(hi) + 1) for name, lo, hi in rows} == NET_BLOCKS


def test_each_xdist_worker_gets_its_own_octet(monkeypatch: pytest.MonkeyPatch) -> None:
    octets = {}
    for n in range(10):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{n}")
        octets[n] = {purpose: loopback_net(purpose) for purpose in NET_BLOCKS}
    for purpose, block in NET_BLOCKS.items():
        assert [octets[n][purpose] for n in range(10)] == list(block), purpose
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw12")
    assert loopback_net("nodes") == NET_BLOCKS["nodes"][2]  # more workers than octets: they wrap


def test_without_xdist_the_pid_picks_the_octet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert loopback_net("fleet") == NET_BLOCKS["fleet"][os.getpid() % 10]
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "master")  # not a worker name: the pid again
    assert loopback_net("fleet") == NET_BLOCKS["fleet"][os.getpid() % 10]


def test_an_unknown_purpose_names_the_fix() -> None:
    with pytest.raises(ValueError, match=r"no loopback block for 'fleets'; add one to NET_BLOCKS \(taken: nodes, "):
        loopback_net("fleets")
