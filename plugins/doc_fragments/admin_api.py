# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # How node_info, node_action and health_gate reach a node's admin API (plugins/module_utils/_admin_api.py).
    DOCUMENTATION = r"""
options:
  url:
    description:
      - Base URL of the node's admin API, usually the host's C(exchange_admin_url), for example
        C(https://10.20.1.11:8443).
      - Must not carry credentials (C(user:password@)); the bearer token authenticates.
    type: str
    required: true
  token:
    description: Bearer token of the node's admin API (from vault). Never logged.
    type: str
    required: true
  request_timeout:
    description:
      - Seconds one request to the admin API may take, from connecting to the last byte of the answer.
    type: float
    default: 10
  validate_certs:
    description:
      - Verify the node's TLS certificate (C(https://) URLs). Set from the host's C(exchange_admin_validate_certs).
      - Turn it off only on a test bench; the bearer token then goes to whoever answers.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file of the CA(s) that sign the admin API's certificates, when they are not in the
        controller's trust store (a private CA). Set from the host's C(exchange_admin_ca_path).
    type: path
  client_cert:
    description:
      - PEM file of the client certificate shown to nodes that require mutual TLS (it may hold the
        key too). Set from the host's C(exchange_admin_client_cert).
    type: path
  client_key:
    description:
      - PEM file of the private key of O(client_cert), when O(client_cert) does not hold it.
        Set from the host's C(exchange_admin_client_key).
    type: path
notes:
  - Redirects are never followed - the bearer token is not sent across one - and proxies from the
    environment are not used; a 3xx answer fails the task, naming where it pointed.
  - Every answer is read up to 4 MiB; a JSON answer must be an object.
  - The files of O(ca_path), O(client_cert) and O(client_key) are read on the controller, where
    the module runs.
"""
