# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The nodes really are reached over SSH: through the scenario's sshd on the node's own loopback
address, with host key checking against the scenario's known_hosts."""

from __future__ import annotations

import shlex

from conftest import fleet_root, node_vars

testinfra_hosts = ["matching_nodes", "wallet_nodes"]
SSH_DIR = fleet_root() / "ssh"


def test_testinfra_reaches_the_node_over_ssh_on_its_own_address(host):
    hv = node_vars(host)
    # SSH_CONNECTION = client address, client port, server address, server port
    server = host.check_output("echo $SSH_CONNECTION").split()[2:]
    assert server == [hv["ansible_host"], "2222"]


def test_sshd_listens_on_the_node_addresses_only(controller):
    pid = controller.file(str(SSH_DIR / "sshd.pid")).content_string.strip()
    listening = controller.check_output(f"ss -Hltnp | grep 'pid={int(pid)},' | awk '{{print $4}}'").split()
    nodes = controller.check_output(
        f"grep -h ansible_host {shlex.quote(str(fleet_root() / 'inventory' / 'hosts.yml'))}").split()
    node_addresses = {a for a in nodes if a.startswith("127.")} - {nodes[-1]}  # last one is HAProxy
    assert sorted(listening) == sorted(f"{a}:2222" for a in node_addresses)


def test_converge_copied_the_release_through_sshd(controller):
    log = controller.file(str(SSH_DIR / "sshd.log")).content_string
    assert "Accepted publickey for root" in log
    assert "subsystem 'sftp' for root" in log, "no file went through this sshd"


def test_an_unknown_host_key_is_refused(host, controller):
    hv = node_vars(host)
    cmd = (f"ssh -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes "
           f"-i {shlex.quote(str(SSH_DIR / 'client_ed25519_key'))} -p 2222 root@{hv['ansible_host']} true")
    res = controller.run(cmd)
    assert res.rc != 0 and "Host key verification failed" in res.stderr, res.stderr
