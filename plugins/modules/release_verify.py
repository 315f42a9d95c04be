#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: release_verify
short_description: Verify a release artifact's sha256 and ed25519 signature against the pinned key
version_added: 0.1.0
description:
  - Checks that a release artifact has the SHA-256 its catalog entry pins and that its ed25519
    signature (base64, over the artifact bytes) verifies against the pinned release public key
    (the inventory's C(exchange_release_pubkey)).
  - Both checks run over the same bytes, read once. Any mismatch fails the task with a message
    naming the artifact and the fix; nothing is changed anywhere, whatever the outcome.
  - Only local artifacts are supported (a path or a C(file://) URL); stage remote artifacts on the
    controller first, for example with M(ansible.builtin.get_url).
  - Runs on the controller, before any node is touched; run it on C(localhost) or delegate it there.
author:
  - exchangeops engineering (@exchangeops)
attributes:
  check_mode:
    description: Can run in check mode and return the verification result.
    support: full
    details: Read-only; it runs the same in check mode.
  diff_mode:
    description: Will return details on what has changed.
    support: none
options:
  artifact:
    description:
      - The artifact, as an absolute path, a path relative to O(base_dir), or a C(file://) URL
        (the catalog entry's C(artifact.url)).
    type: str
    required: true
  base_dir:
    description:
      - Folder a relative O(artifact) path is resolved against. Defaults to the working directory.
    type: path
  sha256:
    description:
      - The SHA-256 the catalog pins for the artifact (64 hex digits, an optional C(sha256:) prefix is accepted).
    type: str
    required: true
  signature:
    description:
      - The base64 ed25519 signature of the artifact bytes (the catalog entry's C(artifact.signature)).
    type: str
    required: true
  public_key:
    description:
      - The pinned release public key, PEM (C(-----BEGIN PUBLIC KEY-----)), usually C(exchange_release_pubkey).
    type: str
    required: true
requirements:
  - cryptography (Python library, on the controller)
seealso:
  - module: exchangeops.patching.release_install
"""

EXAMPLES = r"""
- name: Verify the release artifact against the pinned key
  exchangeops.patching.release_verify:
    artifact: "{{ patch.artifact.url }}"
    sha256: "{{ patch.artifact.sha256 }}"
    signature: "{{ patch.artifact.signature }}"
    public_key: "{{ exchange_release_pubkey }}"
  delegate_to: localhost
  run_once: true
  register: verified

- name: Verify a staged artifact by relative path
  exchangeops.patching.release_verify:
    artifact: staging/matching-engine-1.4.3.tar.gz
    base_dir: "{{ playbook_dir }}"
    sha256: "{{ lookup('ansible.builtin.file', 'staging/matching-engine-1.4.3.tar.gz.sha256').split()[0] }}"
    signature: "{{ lookup('ansible.builtin.file', 'staging/matching-engine-1.4.3.tar.gz.sig') }}"
    public_key: "{{ exchange_release_pubkey }}"
  delegate_to: localhost
"""

RETURN = r"""
artifact:
  description: The local path of the verified artifact.
  returned: success
  type: str
  sample: /srv/releases/matching-engine-1.4.3.tar.gz
sha256:
  description: The artifact's SHA-256, lower-case hex.
  returned: success
  type: str
  sample: 3fa1c0d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90
verified:
  description: True when both checks passed; false, with the task failed, when either did not.
  returned: always
  type: bool
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.exchangeops.patching.plugins.module_utils import _release


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            artifact=dict(type="str", required=True),
            base_dir=dict(type="path"),
            sha256=dict(type="str", required=True),
            signature=dict(type="str", required=True),
            public_key=dict(type="str", required=True),
        ),
        supports_check_mode=True,
    )
    if not _release.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=_release.CRYPTOGRAPHY_IMPORT_ERROR)
    try:
        path = _release.artifact_path(module.params["artifact"], module.params["base_dir"])
        digest = _release.verify_artifact(path, module.params["sha256"], module.params["signature"],
                                          module.params["public_key"])
    except _release.ReleaseError as e:
        module.fail_json(msg=str(e), verified=False)
    module.exit_json(changed=False, artifact=path, sha256=digest, verified=True)


if __name__ == "__main__":
    main()
