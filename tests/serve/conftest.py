"""Fixtures of the chatops service tests (helpers in tests/serve/chat.py): a stand-in for Slack's response_url,
bob's approval key, and one real service per module whose driver inventory reaches no node."""

from __future__ import annotations

import shutil

import pytest

from tests.serve.chat import Receiver, make_keys, running_service


@pytest.fixture(scope="module")
def receiver():
    """Slack's response_url stand-in (127.0.0.1, a free port); every POST is in ``receiver.posts``."""
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """bob's chat approval key (ed25519, no passphrase, 0600) and an allowed_signers file naming it "bob"."""
    folder = tmp_path_factory.mktemp("serve-keys")
    yield make_keys(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def service_no_fleet(tmp_path_factory, receiver, keys):
    """``exchpatch serve`` under uvicorn, for the module: a tiny inventory whose nodes answer nothing, the
    checkout's patches/ catalog, a lock folder of its own, response URLs allowed only on ``receiver``."""
    folder = tmp_path_factory.mktemp("serve-no-fleet")
    with running_service(folder, receiver=receiver, keys=keys) as service:
        yield service
