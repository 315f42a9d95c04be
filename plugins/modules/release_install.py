#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: release_install
short_description: Unpack a release beside the running one, switch current atomically, prune old releases
version_added: 0.1.0
description:
  - Manages the releases of one exchange node root (C(exchange_node_root)) laid out as
    C(releases/<version>/) folders, a relative C(current -> releases/<version>) symlink and a
    C(data/) folder that is never inside a release and never touched by this module.
  - A missing release is unpacked from O(artifact), a tarball already on the node. It is first
    copied into a fresh private (0700) folder, hashed while copying, and the copy's SHA-256 checked
    against O(sha256); the manifest is read and the release unpacked from that copy only, so the
    staged file cannot be swapped between the check and the use. The artifact must be a regular
    file of at most O(max_artifact_size) bytes.
  - The archive is refused when a member could land outside the release folder. Every member's
    destination is resolved, following the symlinks earlier members made, and must stay inside;
    absolute names, C(..), links pointing outside, hard links to anything but an earlier file of
    the archive, devices and FIFOs are refused, and so are more than O(max_members) members or
    more than O(max_unpacked_size) bytes. It is then extracted with Python's C(data) filter (a
    Python without it, older than 3.11.4, is refused). A C(RELEASE.json) naming another version
    or component is refused too.
  - It is unpacked into a hidden temporary folder inside C(releases/) and renamed to
    C(releases/<version>), so a half-unpacked release is never visible.
  - With O(state=current), C(current) is switched by renaming a fresh relative symlink onto it
    (one atomic C(rename)); the service must be restarted to run the new code.
  - Rollback is O(state=current) with the O(version) of a release still on the node and no
    O(artifact); O(artifact) and O(sha256) are only needed when the release must be unpacked.
  - After that, releases other than the current one, the previous one and the O(version) of this
    task are pruned so that only the O(keep) newest of them stay.
  - The signature is verified on the controller with M(exchangeops.patching.release_verify) before
    the artifact is copied to nodes; this module only re-checks the checksum.
  - Runs on the node (C(ansible_connection=local) on the testbed); stdlib only.
author:
  - exchangeops engineering (@exchangeops)
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: The artifact's checksum and manifest are checked, and what would be unpacked, switched and
      pruned is reported, without writing anything.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: The C(current) symlink target and the list of releases, before and after.
options:
  root:
    description:
      - The node root (C(exchange_node_root)) holding C(releases/), C(current) and C(data/).
    type: path
    required: true
  version:
    description:
      - The release version, which is also its folder name under C(releases/).
    type: str
    required: true
  artifact:
    description:
      - The release tarball, already on the node. Needed only when C(releases/<version>) is not
        unpacked yet; when given it is always re-checked against O(sha256).
    type: path
  sha256:
    description:
      - The SHA-256 the catalog pins for O(artifact) (64 hex digits). Required with O(artifact).
    type: str
  component:
    description:
      - The component the release must be built for (its C(RELEASE.json) C(component)).
      - Defaults to the component of the release C(current) points to, when there is one.
    type: str
  state:
    description:
      - V(present) makes sure the release is unpacked beside the current one; C(current) is left alone.
      - V(current) also switches C(current) to it (install and switch, or rollback to a kept release).
    type: str
    choices: [present, current]
    default: present
  keep:
    description:
      - How many older releases to keep besides the current one, the previous one (the rollback
        target) and O(version). The newest are kept, the rest deleted. V(0) keeps only those.
    type: int
    default: 3
  max_artifact_size:
    description:
      - The largest artifact accepted, in bytes.
    type: int
    default: 1073741824
  max_members:
    description:
      - The most members (files, folders, links) the archive may hold.
    type: int
    default: 100000
  max_unpacked_size:
    description:
      - The most bytes of file data the archive may unpack to.
    type: int
    default: 4294967296
seealso:
  - module: exchangeops.patching.release_verify
"""

EXAMPLES = r"""
- name: Unpack the new release beside the running one
  exchangeops.patching.release_install:
    root: "{{ exchange_node_root }}"
    version: "{{ patch.version }}"
    artifact: "{{ exchange_node_root }}/tmp/{{ patch.component }}-{{ patch.version }}.tar.gz"
    sha256: "{{ patch.artifact.sha256 }}"
    state: present

- name: Switch current to the new release
  exchangeops.patching.release_install:
    root: "{{ exchange_node_root }}"
    version: "{{ patch.version }}"
    state: current
    keep: 2
  register: release
  notify: Restart exchange node

- name: Roll back to the release that was current before
  exchangeops.patching.release_install:
    root: "{{ exchange_node_root }}"
    version: "{{ release.previous }}"
    state: current
"""

RETURN = r"""
current:
  description: The version C(current) points to after the task (null when there is no C(current)).
  returned: always
  type: str
  sample: 1.4.3
previous:
  description: The version C(current) pointed to before the task, or null when there was none.
  returned: always
  type: str
  sample: 1.4.2
rollback_to:
  description:
    - The release kept as the rollback target and never pruned. When this task switched
      C(current) it is RV(previous); otherwise the newest release older than RV(current).
  returned: always
  type: str
  sample: 1.4.2
releases:
  description: The versions unpacked under C(releases/) after the task, oldest first.
  returned: always
  type: list
  elements: str
  sample: [1.4.1, 1.4.2, 1.4.3]
pruned:
  description: The versions deleted (or, in check mode, that would be deleted), oldest first.
  returned: always
  type: list
  elements: str
  sample: [1.3.9]
unpacked:
  description: Whether the release was (or, in check mode, would be) unpacked from O(artifact).
  returned: always
  type: bool
  sample: true
switched:
  description: Whether C(current) was (or, in check mode, would be) switched.
  returned: always
  type: bool
  sample: true
release_dir:
  description: The folder of the release O(version).
  returned: always
  type: str
  sample: /srv/exchange/releases/1.4.3
"""

import contextlib
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.exchangeops.patching.plugins.module_utils import _release


def _expected_component(root: str, current: str | None, wanted: str | None) -> str | None:
    if wanted or current is None:
        return wanted
    current_dir = os.path.join(_release.releases_dir(root), current)
    if not os.path.isdir(current_dir):
        return None
    return _release.release_manifest(current_dir).get("component")


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", required=True),
            version=dict(type="str", required=True),
            artifact=dict(type="path"),
            sha256=dict(type="str"),
            component=dict(type="str"),
            state=dict(type="str", choices=["present", "current"], default="present"),
            keep=dict(type="int", default=3),
            max_artifact_size=dict(type="int", default=_release.DEFAULT_MAX_ARTIFACT_SIZE),
            max_members=dict(type="int", default=_release.DEFAULT_MAX_MEMBERS),
            max_unpacked_size=dict(type="int", default=_release.DEFAULT_MAX_UNPACKED_SIZE),
        ),
        required_by=dict(artifact="sha256"),
        supports_check_mode=True,
    )
    params = module.params
    root, version, artifact, state = params["root"], params["version"], params["artifact"], params["state"]
    if not os.path.isdir(root):
        module.fail_json(msg=f"root: {root} is not a folder; set exchange_node_root to the node's root folder")
    if params["keep"] < 0:
        module.fail_json(msg=f"keep: {params['keep']} is negative; keep 0 or more older releases")
    for limit in ("max_artifact_size", "max_members", "max_unpacked_size"):
        if params[limit] <= 0:
            module.fail_json(msg=f"{limit}: {params[limit]} is not a limit; give a number > 0")
    limits = dict(max_members=params["max_members"], max_unpacked_size=params["max_unpacked_size"])
    release_dir = os.path.join(_release.releases_dir(root), version)
    try:
        with contextlib.ExitStack() as stack:
            _release.check_version(version)
            before_link = _release.current_target(root)
            before = _release.current_version(root)
            releases_before = _release.list_releases(root)
            installed = version in releases_before
            if os.path.lexists(release_dir) and not installed:
                raise _release.ReleaseError(f"{release_dir}: exists but is not a release folder (a file or a "
                                            "symlink); move it away and run again")
            component = _expected_component(root, before, params["component"])
            copy = None
            if artifact and installed:
                _release.check_sha256(artifact, params["sha256"], params["max_artifact_size"])
            elif artifact:
                # One private copy is hashed, read and unpacked: no swap between check and use. In check
                # mode it goes to the system's temp folder, so the node root is not written at all.
                folder = _release.releases_dir(root)
                parent = folder if os.path.isdir(folder) and not module.check_mode else None
                copy = stack.enter_context(_release.private_copy(artifact, params["sha256"],
                                                                 params["max_artifact_size"], parent))
                _release.check_manifest(_release.archive_manifest(copy, artifact, **limits), artifact, version,
                                        component)
            else:
                if not installed:
                    raise _release.ReleaseError(f"{release_dir}: is not unpacked and no artifact was given; pass "
                                                "artifact and sha256 to install it (without them only a release "
                                                "still on the node can be switched to)")
            if installed:
                _release.check_manifest(_release.release_manifest(release_dir), release_dir, version, component)

            unpack = not installed
            switch = state == "current" and before != version
            after = version if state == "current" else before
            releases_after = sorted({*releases_before, version}, key=_release.version_key)
            rollback_to = before if switch else _release.rollback_target(releases_after, after)
            pruned = _release.prune_plan(releases_after, after, rollback_to, params["keep"], protect=(version,))
            releases_final = [r for r in releases_after if r not in pruned]
            changed = unpack or switch or bool(pruned)

            if changed and not module.check_mode:
                if unpack:
                    _release.unpack_release(copy, root, version, component, artifact, **limits)
                if switch:
                    _release.switch_current(root, version)
                for old in pruned:
                    _release.remove_release(root, old)
    except _release.ReleaseError as e:
        module.fail_json(msg=str(e))
    except OSError as e:
        module.fail_json(msg=f"{root}: release operation failed ({e}); check the node root's permissions and "
                         "free space")

    result = dict(
        changed=changed, current=after, previous=before, rollback_to=rollback_to, releases=releases_final,
        pruned=pruned, unpacked=unpack, switched=switch, release_dir=release_dir,
    )
    if module._diff:
        after_link = f"{_release.RELEASES_DIR}/{version}" if switch else before_link
        result["diff"] = dict(
            before_header=os.path.join(root, _release.CURRENT_LINK),
            after_header=os.path.join(root, _release.CURRENT_LINK),
            before=dict(current=before_link, releases=releases_before),
            after=dict(current=after_link, releases=releases_final),
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
