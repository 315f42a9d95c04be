#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: release_verify
short_description: Verify a release artifact's signature and bind its catalog entry to the signed manifest
version_added: 0.1.0
description:
  - Checks that a release artifact has the SHA-256 its catalog entry pins and that its ed25519
    signature (base64, over the artifact bytes) verifies against the pinned release public key
    (the inventory's C(exchange_release_pubkey)).
  - Both checks run over the same bytes, read once. Any mismatch fails the task with a message
    naming the artifact and the fix; nothing is changed anywhere, whatever the outcome.
  - The artifact must be a regular file (a device, a FIFO or a folder is refused before a byte is
    read) of at most O(max_artifact_size) bytes; ed25519 signs the whole message, so it is read
    into memory once.
  - The release's C(RELEASE.json) is then read from those same verified bytes and returned as
    RV(manifest). With O(expect), every fact the catalog entry states (component, version, fixes,
    migration, restart) must be what the signed manifest says; a manifest lacking these facts is
    refused. A catalog cannot make an old release pass for a new one, or claim CVEs it does not fix.
  - With O(fleet_keys), every host must pin the same release key, and it must be O(public_key).
  - With O(running), a target version older than a version a node runs is a downgrade, refused
    unless O(allow_downgrade) is set with a O(reason); C(playbooks/rollback.yml) is the way back.
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
  max_artifact_size:
    description:
      - The largest artifact accepted, in bytes; a bigger one is refused with a clear message.
    type: int
    default: 1073741824
  expect:
    description:
      - What the catalog entry states about the release. Each fact given must equal the signed
        manifest's (O(expect.fixes) as a set of CVE ids); the task fails naming every field that differs.
    type: dict
    suboptions:
      component:
        description: The component (C(matching-engine), C(wallet-signer)).
        type: str
      version:
        description: The release version.
        type: str
      fixes:
        description: The CVE ids the release fixes.
        type: list
        elements: str
      migration:
        description: The migration scope (C(none), C(forward_compatible), C(irreversible)).
        type: str
      restart:
        description: The restart scope (C(none), C(service), C(system)).
        type: str
      sbom_sha256:
        description:
          - The SHA-256 of the release's SBOM the catalog entry names; the signed manifest's
            C(sbom_sha256) must be the same, so the SBOM exposure is judged on is the one that was signed.
        type: str
  entry:
    description:
      - How errors name the catalog entry, for example C(patches/x.yml) followed by the entry's id.
      - Defaults to the artifact's path.
    type: str
  fleet_keys:
    description:
      - The release public key each host pins (host name to PEM), usually C(exchange_release_pubkey)
        of every matching and wallet node. All must be the same key, and O(public_key); the task
        fails naming the hosts that differ (or have none).
    type: dict
  running:
    description:
      - The version each node of the component runs (host name to version). When the target version
        (O(expect.version), else the manifest's) is older than any of them, the task fails unless
        O(allow_downgrade) and O(reason) are given.
    type: dict
  allow_downgrade:
    description:
      - Allow a target older than a version a node runs. Needs O(reason).
    type: bool
    default: false
  reason:
    description:
      - Why a downgrade is allowed (recorded by the caller in its audit trail).
    type: str
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

- name: Verify the artifact, bind the catalog entry to the signed manifest, refuse a downgrade
  exchangeops.patching.release_verify:
    artifact: "{{ patch.artifact.url }}"
    sha256: "{{ patch.artifact.sha256 }}"
    signature: "{{ patch.artifact.signature }}"
    public_key: "{{ exchange_release_pubkey }}"
    entry: "{{ patch.source }}: {{ patch.id }}"
    expect:
      component: "{{ patch.component }}"
      version: "{{ patch.version }}"
      fixes: "{{ patch.fixes }}"
      migration: "{{ patch.migration }}"
      restart: "{{ patch.restart }}"
    fleet_keys:
      me-0a: "{{ hostvars['me-0a'].exchange_release_pubkey }}"
      wallet-0: "{{ hostvars['wallet-0'].exchange_release_pubkey }}"
    running:
      me-0a: 1.4.2
      me-0b: 1.4.2
  delegate_to: localhost
  run_once: true

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
  description: True when every check passed; false, with the task failed, when one did not.
  returned: always
  type: bool
  sample: true
manifest:
  description: The release's C(RELEASE.json), read from the verified bytes.
  returned: success
  type: dict
  sample:
    component: matching-engine
    version: 1.4.3
    fixes: [CVE-2026-31337]
    migration: none
    restart: service
    fault: null
mismatch:
  description: The catalog fields that disagree with the signed manifest (or that the manifest lacks).
  returned: when the catalog entry disagrees with the signed manifest
  type: list
  elements: str
  sample: [version, fixes]
downgrade:
  description: Whether the target version is older than a version a node runs (and the downgrade was allowed).
  returned: success
  type: bool
  sample: false
downgrade_from:
  description: The nodes running a newer version than the target, with that version.
  returned: success
  type: dict
  sample: {}
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
            public_key=dict(type="str", required=True, no_log=False),
            max_artifact_size=dict(type="int", default=_release.DEFAULT_MAX_ARTIFACT_SIZE),
            expect=dict(type="dict", options=dict(
                component=dict(type="str"),
                version=dict(type="str"),
                fixes=dict(type="list", elements="str"),
                migration=dict(type="str"),
                restart=dict(type="str"),
                sbom_sha256=dict(type="str"),
            )),
            entry=dict(type="str"),
            fleet_keys=dict(type="dict", no_log=False),
            running=dict(type="dict"),
            allow_downgrade=dict(type="bool", default=False),
            reason=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not _release.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=_release.CRYPTOGRAPHY_IMPORT_ERROR)
    if params["max_artifact_size"] <= 0:
        module.fail_json(msg=f"max_artifact_size: {params['max_artifact_size']} is not a size; give bytes > 0",
                         verified=False)
    expect = {k: v for k, v in (params["expect"] or {}).items() if v is not None}
    try:
        path = _release.artifact_path(params["artifact"], params["base_dir"])
        where = params["entry"] or path
        if params["fleet_keys"]:
            pinned = _release.check_pinned_key(params["fleet_keys"])
            if _release.key_fingerprint(pinned) != _release.key_fingerprint(params["public_key"]):
                raise _release.ReleaseVerifyError(
                    f"public_key: {_release.key_fingerprint(params['public_key'])} is not the key the fleet pins "
                    f"({_release.key_fingerprint(pinned)}); verify with the fleet's exchange_release_pubkey")
        digest, manifest = _release.verify_release(path, params["sha256"], params["signature"], params["public_key"],
                                                   params["max_artifact_size"])
        if expect:
            _release.check_against_manifest(expect, manifest, where)
        downgrade_from: dict[str, str] = {}
        if params["running"]:
            target = str(expect.get("version") or manifest.get("version"))
            downgrade_from = _release.check_downgrade(target, params["running"], params["allow_downgrade"],
                                                      params["reason"], where)
    except _release.ManifestMismatchError as e:
        module.fail_json(msg=str(e), verified=False, mismatch=e.fields)
    except _release.ReleaseError as e:
        module.fail_json(msg=str(e), verified=False)
    module.exit_json(changed=False, artifact=path, sha256=digest, verified=True, manifest=manifest,
                     downgrade=bool(downgrade_from), downgrade_from=downgrade_from)


if __name__ == "__main__":
    main()
