"""Import the collection's own module_utils from the driver (the store, the audit chain, approvals).

The driver mostly runs playbooks through ansible-runner; the few commands that work on the state
store directly (``exchpatch store``) share the collection's code instead of copying it. The
collection is found the way ansible-playbook finds it: ansible-core's collection loader over the
configured collections paths (ANSIBLE_COLLECTIONS_PATH / ansible.cfg), plus this checkout's
``collections/`` folder (the ``make setup`` link) when the driver runs from a clone.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

PACKAGE = "ansible_collections.exchangeops.patching.plugins.module_utils"
_CHECKOUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "collections")


def module_utils(name: str) -> ModuleType:
    """``exchangeops.patching``'s ``plugins/module_utils/<name>.py`` as a module."""
    target = f"{PACKAGE}.{name}"
    if target in sys.modules:
        return sys.modules[target]
    from ansible import constants as C
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    if not any(isinstance(f, _AnsibleCollectionFinder) for f in sys.meta_path):
        # the ansible package's own site-packages/ansible_collections may be cached as a plain namespace
        # package; the collection loader must own that name, as it does inside ansible-playbook
        for cached in [m for m in sys.modules if m == "ansible_collections" or m.startswith("ansible_collections.")]:
            del sys.modules[cached]
        paths = [p for p in dict.fromkeys([*C.COLLECTIONS_PATHS, _CHECKOUT]) if os.path.isdir(p)]
        _AnsibleCollectionFinder(paths=paths)._install()  # pylint: disable=protected-access
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise RuntimeError("exchangeops.patching is not installed where Ansible looks for collections; install it "
                           "(ansible-galaxy collection install) or run `make setup` in a checkout") from e
