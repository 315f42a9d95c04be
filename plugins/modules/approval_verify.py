#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: approval_verify
short_description: Require an approval signed by an approver who is not the operator
version_added: 0.2.0
description:
  - Checks that a change which needs a second person (an emergency or freeze-window override, an
    irreversible migration, a downgrade) carries an approval signed with an OpenSSH key listed in
    an C(allowed_signers) file (see C(ssh-keygen -Y sign) and the ALLOWED SIGNERS section of
    C(ssh-keygen(1))). Approvals are made with C(exchpatch approve); the format is described in
    C(docs/approvals.md).
  - The approval comes from O(approval_files) (the first one of a wanted O(kind) that verifies), else,
    with the C(postgresql) state store, from the approvals published there for this kind, patch and
    operator. Stored approvals are verified exactly like files.
  - Refused, each with one line naming the field and the fix, before anything is changed - an approval
    of another O(kind), O(patch_id) or O(operator); one whose C(not_after) has passed (the state
    store's clock when there is one, else the controller's); a signer whose key is not in
    O(allowed_signers), or is listed there under a pattern or several names; a signature that does
    not verify for the C(exchpatch-approval) namespace; an approver who is the operator.
  - The approver's identity is learned from the signature (C(ssh-keygen -Y find-principals)), never
    from the approval's text, then checked with C(ssh-keygen -Y verify -I identity).
  - Read-only; runs on the controller (run it on C(localhost) or delegate it there).
author:
  - exchangeops engineering (@exchangeops)
attributes:
  check_mode:
    description: Can run in check mode and verifies exactly as in a normal run.
    support: full
  diff_mode:
    description: Nothing to show; it changes nothing.
    support: none
requirements:
  - ssh-keygen from OpenSSH 8.9 or later on the controller.
  - psycopg 3 on the controller when O(store=postgresql).
options:
  kind:
    description:
      - The approval kinds that satisfy this requirement; an approval of any one of them will do.
    type: list
    elements: str
    required: true
    choices: [emergency, freeze_override, irreversible, downgrade]
  patch_id:
    description: Catalog id of the patch the run rolls out.
    type: str
    required: true
  operator:
    description: Who runs the rollout; the approval must name this operator and must not be signed by them.
    type: str
    required: true
  allowed_signers:
    description:
      - The OpenSSH C(allowed_signers) file listing the approvers' public keys, one exact name per key.
    type: path
    required: true
  approval_files:
    description: Approval files made by C(exchpatch approve).
    type: list
    elements: path
    default: []
  store:
    description:
      - The state store backend (C(file) or C(postgresql)); default E(EXCHPATCH_STATE_STORE), else C(file).
      - With C(postgresql) the store's clock judges expiry, and approvals published there are found when no
        file of the wanted kind is given.
    type: str
    choices: [file, postgresql]
  store_dsn:
    description: The PostgreSQL DSN (default E(EXCHPATCH_STATE_STORE_DSN)); a secret, never logged.
    type: str
  ssh_keygen:
    description: The ssh-keygen program.
    type: str
    default: ssh-keygen
"""

EXAMPLES = r"""
- name: Require a signed approval of the emergency override
  exchangeops.patching.approval_verify:
    kind: [emergency, freeze_override]
    patch_id: matching-engine-1.4.3
    operator: alice
    allowed_signers: /etc/exchpatch/allowed_signers
    approval_files:
      - /home/alice/emergency-approval.json
  register: approval

- name: Find a stored approval of an irreversible migration in the team's state store
  exchangeops.patching.approval_verify:
    kind: [irreversible]
    patch_id: wallet-signer-2.0.0
    operator: alice
    allowed_signers: /etc/exchpatch/allowed_signers
    store: postgresql
    store_dsn: "{{ exchange_state_store_dsn }}"
"""

RETURN = r"""
approval:
  description: The verified approval, for the audit trail.
  returned: success
  type: dict
  contains:
    id:
      description: SHA-256 of the signed document.
      type: str
    kind:
      description: The approved kind.
      type: str
    patch_id:
      description: The approved patch.
      type: str
    operator:
      description: The operator the approval names.
      type: str
    reason:
      description: Why the approver approved.
      type: str
    not_after:
      description: When the approval expires (UTC).
      type: str
    approver:
      description: The approver's identity, from the allowed_signers file.
      type: str
    approver_key_fingerprint:
      description: SHA-256 fingerprint of the approver's key.
      type: str
    source:
      description: Where the approval came from (a file or the state store).
      type: str
  sample:
    id: 5f0c2d0e9b1e4c5d8a7f6e5d4c3b2a1908f7e6d5c4b3a291807f6e5d4c3b2a19
    kind: emergency
    patch_id: matching-engine-1.4.3
    operator: alice
    reason: KEV-listed RCE in the order gateway
    not_after: "2026-11-30T18:00:00Z"
    approver: bob
    approver_key_fingerprint: SHA256:Hzd+9csu50Mq0GAXO45W3bbdM7tj9E0eQ1doX3j/r8M
    source: approval file /home/alice/emergency-approval.json
refusal:
  description: Why the approval was refused - the field and the one-line reason.
  returned: failure
  type: dict
  sample:
    field: approver
    reason: "approval file a.json: approver 'alice' is the operator 'alice'; a second person listed in the
      allowed_signers file must approve"
"""

import datetime as dt

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.exchangeops.patching.plugins.module_utils import _approval, _store


def _find(module: AnsibleModule) -> dict:
    p = module.params
    kinds = list(dict.fromkeys(p["kind"]))
    conf = _store.settings(p["store"], p["store_dsn"])
    approvals = []
    unreadable = []
    for path in p["approval_files"]:
        try:
            approvals.append(_approval.read_approval_file(path))
        except _approval.ApprovalError as e:
            unreadable.append(e)
    wanted = [a for a in approvals if a.document.kind in kinds]
    where = "was given"
    if conf.is_postgresql:
        # the store's clock judges expiry: no controller's clock is trusted by the others
        with _store.connect(conf) as conn:
            _store.ensure_schema(conn)
            now = _store.now(conn)
            if not wanted:
                wanted = _approval.find_stored(conn, kinds, p["patch_id"], p["operator"])
        where = f"was given or is published in the state store ({_store.describe(conf)})"
    else:
        now = dt.datetime.now(dt.UTC)
    candidates = wanted or approvals
    if not candidates:
        if unreadable:
            raise unreadable[0]
        raise _approval.ApprovalError(
            "approval", f"this run needs an approval of kind {' or '.join(kinds)} for {p['patch_id']} and operator "
            f"{p['operator']}, and none {where}",
            f"ask an approver to run exchpatch approve --kind {kinds[0]} --patch {p['patch_id']} --operator "
            f"{p['operator']} ..., then pass the file with -e preflight_approval_file=FILE (exchpatch deploy "
            "--approval FILE), or publish it with --store")
    return _approval.verify_any(candidates, kinds=kinds, patch_id=p["patch_id"], operator=p["operator"],
                                allowed_signers=p["allowed_signers"], now=now, ssh_keygen=p["ssh_keygen"]).to_dict()


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            kind=dict(type="list", elements="str", required=True, choices=list(_approval.KINDS)),
            patch_id=dict(type="str", required=True),
            operator=dict(type="str", required=True),
            allowed_signers=dict(type="path", required=True),
            approval_files=dict(type="list", elements="path", default=[]),
            store=dict(type="str", choices=list(_store.BACKENDS)),
            store_dsn=dict(type="str", no_log=True),
            ssh_keygen=dict(type="str", default="ssh-keygen", no_log=False),
        ),
        supports_check_mode=True,
    )
    if not module.params["kind"]:
        module.fail_json(msg="kind is empty; give the approval kinds this run needs, e.g. [emergency]",
                         refusal={"field": "kind", "reason": "kind is empty"})
    try:
        approval = _find(module)
    except _approval.ApprovalError as e:
        module.fail_json(msg=str(e), refusal=e.to_dict())
    except _store.StoreError as e:
        module.fail_json(msg=str(e), refusal={"field": "store", "reason": str(e)})
    module.exit_json(changed=False, approval=approval)


if __name__ == "__main__":
    main()
