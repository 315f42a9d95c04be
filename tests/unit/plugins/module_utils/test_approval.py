# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The canonical approval document, the file format, the SSHSIG reader and the checks, with real ssh-keygen
keys and signatures (no PostgreSQL here: the store paths are tested in tests/integration/test_approvals.py)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import pickle
import shutil
import struct
import subprocess

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils._approval import (
    FORMAT,
    ApprovalError,
    approval_file_text,
    approval_id,
    canonical_json,
    check_scope,
    load_approval,
    make_document,
    parse_document,
    parse_time,
    parse_validity,
    read_approval_file,
    sign,
    signature_info,
    verify,
    verify_any,
)

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
NONCE = "0123456789abcdef0123456789abcdef"
needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")


def doc(**kw):
    args = {"kind": "emergency", "patch_id": "matching-engine-1.4.3", "operator": "alice",
            "reason": "KEV-listed RCE in the gateway", "not_after": NOW + dt.timedelta(hours=2), "issued_at": NOW,
            "nonce": NONCE, **kw}
    return make_document(**args)


# --------------------------------------------------------------------------- the canonical document


def test_the_canonical_document_is_sorted_compact_ascii_json():
    text = doc(reason="café closes — now").canonical()
    assert text == (
        '{"format":"exchpatch-approval/1","issued_at":"2026-11-30T12:00:00Z","kind":"emergency",'
        f'"nonce":"{NONCE}","not_after":"2026-11-30T14:00:00Z","operator":"alice",'
        '"patch_id":"matching-engine-1.4.3","reason":"caf\\u00e9 closes \\u2014 now"}')
    assert text.isascii()
    assert parse_document(text) == doc(reason="café closes — now")


def test_a_document_round_trips_and_its_id_is_the_sha256_of_its_text():
    text = doc().canonical()
    assert parse_document(text).canonical() == text
    assert approval_id(text) == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("edit", [
    lambda d: json.dumps(d, sort_keys=True),                                   # whitespace
    lambda d: json.dumps(d, separators=(",", ":")),                            # key order
    lambda d: canonical_json({**d, "approver": "bob"}),                        # an extra key
    lambda d: canonical_json({k: v for k, v in d.items() if k != "nonce"}),    # a missing key
    lambda d: canonical_json({**d, "not_after": "2026-11-30T14:00:00+00:00"}),  # another time spelling
    lambda d: canonical_json({**d, "format": "exchpatch-approval/2"}),
    lambda d: canonical_json({**d, "kind": "whatever"}),
    lambda d: canonical_json({**d, "operator": "alice smith"}),
    lambda d: canonical_json({**d, "reason": " "}),
    lambda d: "[]",
    lambda d: "not json",
])
def test_a_document_that_is_not_exactly_canonical_is_refused(edit):
    original = doc().to_dict()
    reordered = dict(reversed(list(original.items())))
    with pytest.raises(ApprovalError) as e:
        parse_document(edit(reordered))
    assert "exchpatch approve" in str(e.value) or "one of" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("kw", "field"), [
    ({"kind": "rollback"}, "kind"),
    ({"patch_id": "../etc/passwd"}, "patch_id"),
    ({"operator": ""}, "operator"),
    ({"reason": ""}, "reason"),
    ({"reason": "two\nlines"}, "reason"),
    ({"not_after": NOW}, "not_after"),
    ({"not_after": NOW + dt.timedelta(days=8)}, "not_after"),
    ({"nonce": "xyz"}, "nonce"),
])
def test_a_bad_field_is_refused_when_the_document_is_made(kw, field):
    with pytest.raises(ApprovalError) as e:
        doc(**kw)
    assert e.value.field == field
    assert pickle.loads(pickle.dumps(e.value)).field == field


def test_times_and_durations():
    assert parse_time("2026-11-30T19:00:00+01:00") == dt.datetime(2026, 11, 30, 18, tzinfo=dt.UTC)
    assert parse_validity("90m") == dt.timedelta(minutes=90)
    assert parse_validity("1d") == dt.timedelta(days=1)
    for bad in ("2026-11-30T18:00:00", "tomorrow"):
        with pytest.raises(ApprovalError, match="not_after"):
            parse_time(bad)
    for bad in ("2 hours", "0h", "-1h"):
        with pytest.raises(ApprovalError, match="valid-for"):
            parse_validity(bad)


# --------------------------------------------------------------------------- scope and expiry (no crypto)


@pytest.mark.parametrize(("kinds", "patch", "operator", "now", "field"), [
    (["downgrade"], "matching-engine-1.4.3", "alice", NOW, "kind"),
    (["emergency"], "matching-engine-1.4.4", "alice", NOW, "patch_id"),
    (["emergency"], "matching-engine-1.4.3", "carol", NOW, "operator"),
    (["emergency"], "matching-engine-1.4.3", "alice", NOW + dt.timedelta(hours=2), "not_after"),
])
def test_an_approval_for_another_run_or_an_expired_one_is_refused(kinds, patch, operator, now, field):
    with pytest.raises(ApprovalError) as e:
        check_scope(doc(), kinds, patch, operator, now, "a.json")
    assert e.value.field == field
    assert str(e.value).startswith("a.json: ")
    assert "\n" not in str(e.value)


def test_scope_matches_the_operator_case_insensitively_and_any_of_the_kinds():
    check_scope(doc(), ["freeze_override", "emergency"], "matching-engine-1.4.3", "ALICE", NOW, "a.json")


# --------------------------------------------------------------------------- signatures (real ssh-keygen)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    root = tmp_path_factory.mktemp("keys")
    for name in ("alice", "bob", "mallory"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(root / name)], check=True)
    pub = {n: (root / f"{n}.pub").read_text().split()[:2] for n in ("alice", "bob", "mallory")}
    (root / "allowed_signers").write_text(
        f'alice namespaces="exchpatch-approval" {" ".join(pub["alice"])}\n'
        f'bob namespaces="exchpatch-approval" {" ".join(pub["bob"])}\n')
    fp = {n: subprocess.run(["ssh-keygen", "-lf", str(root / f"{n}.pub")], capture_output=True, text=True,
                            check=True).stdout.split()[1] for n in ("alice", "bob", "mallory")}
    return root, fp


def signed(keys, signer: str, document=None):
    root, _fp = keys
    text = (document or doc()).canonical()
    return load_approval(approval_file_text(text, sign(text, str(root / signer))), "a.json")


def run(keys, approval, **kw):
    root, _fp = keys
    args = {"kinds": ["emergency"], "patch_id": "matching-engine-1.4.3", "operator": "alice",
            "allowed_signers": str(root / "allowed_signers"), "now": NOW, **kw}
    return verify(approval, **args)


@needs_ssh_keygen
def test_a_good_approval_names_the_approver_and_the_key_fingerprint(keys, tmp_path):
    approval = signed(keys, "bob")
    assert signature_info(approval.signature).fingerprint == keys[1]["bob"]
    path = tmp_path / "a.json"
    path.write_text(approval.file_text())
    on_disk = read_approval_file(str(path))
    result = run(keys, on_disk)
    assert (result.approver, result.fingerprint, result.kind) == ("bob", keys[1]["bob"], "emergency")
    assert result.id == approval_id(approval.document_text)
    assert json.loads(path.read_text())["format"] == FORMAT


@needs_ssh_keygen
def test_self_approval_is_refused(keys):
    with pytest.raises(ApprovalError) as e:
        run(keys, signed(keys, "alice"))
    assert e.value.field == "approver"
    assert "is the operator" in str(e.value) and "second person" in str(e.value)


@needs_ssh_keygen
def test_an_unknown_signer_is_refused_naming_the_key(keys):
    with pytest.raises(ApprovalError) as e:
        run(keys, signed(keys, "mallory"))
    assert e.value.field == "signer"
    assert keys[1]["mallory"] in str(e.value) and "allowed_signers" in str(e.value)


@needs_ssh_keygen
def test_a_document_changed_after_signing_does_not_verify(keys):
    good = signed(keys, "bob")
    other = doc(reason="something else entirely").canonical()
    forged = load_approval(approval_file_text(other, good.signature), "a.json")
    with pytest.raises(ApprovalError) as e:
        run(keys, forged)
    assert e.value.field == "signature"


@needs_ssh_keygen
def test_a_signature_for_another_namespace_is_refused(keys, tmp_path):
    root, _fp = keys
    text = doc().canonical()
    (tmp_path / "d").write_text(text)
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-n", "git", "-f", str(root / "bob"), str(tmp_path / "d")],
                   check=True, capture_output=True)
    approval = load_approval(approval_file_text(text, (tmp_path / "d.sig").read_text()), "a.json")
    with pytest.raises(ApprovalError, match="namespace 'git'"):
        run(keys, approval)


@needs_ssh_keygen
def test_a_pattern_or_a_shared_key_in_allowed_signers_is_refused(keys, tmp_path):
    root, _fp = keys
    bob = " ".join((root / "bob.pub").read_text().split()[:2])
    signers = tmp_path / "allowed_signers"
    for line, words in ((f"* {bob}", "pattern"), (f"b?b {bob}", "pattern"), (f"bob,carol {bob}", "several names")):
        signers.write_text(line + "\n")
        with pytest.raises(ApprovalError, match=words):
            run(keys, signed(keys, "bob"), allowed_signers=str(signers))
    # a key listed on two lines: ssh-keygen names the first, and that is who approved
    signers.write_text(f"bob {bob}\ncarol {bob}\n")
    assert run(keys, signed(keys, "bob"), allowed_signers=str(signers)).approver == "bob"


@needs_ssh_keygen
def test_verify_any_prefers_the_refusal_of_the_right_kind(keys):
    wrong_kind = signed(keys, "bob", doc(kind="downgrade"))
    expired = signed(keys, "bob", doc(not_after=NOW + dt.timedelta(minutes=1)))
    with pytest.raises(ApprovalError) as e:
        verify_any([wrong_kind, expired], kinds=["emergency"], patch_id="matching-engine-1.4.3", operator="alice",
                   allowed_signers=str(keys[0] / "allowed_signers"), now=NOW + dt.timedelta(hours=1))
    assert e.value.field == "not_after"


def test_missing_allowed_signers_names_the_inventory_variable(tmp_path):
    approval = load_approval(approval_file_text(doc().canonical(), fake_signature()), "a.json")
    with pytest.raises(ApprovalError, match="exchange_allowed_signers"):
        verify(approval, kinds=["emergency"], patch_id="matching-engine-1.4.3", operator="alice",
               allowed_signers="", now=NOW)


def test_a_file_that_is_not_an_approval_is_refused(tmp_path):
    for content in ("{}", "[1]", "x" * 70000, '{"format": "exchpatch-approval/1", "document": "{}", "signature": ""}'):
        path = tmp_path / "a.json"
        path.write_text(content)
        with pytest.raises(ApprovalError):
            read_approval_file(str(path))
    with pytest.raises(ApprovalError, match="cannot read"):
        read_approval_file(str(tmp_path / "missing.json"))
    with pytest.raises(ApprovalError, match="armored"):
        load_approval(approval_file_text(doc().canonical(), "not a signature"), "a.json")


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def fake_signature(namespace: bytes = b"exchpatch-approval") -> str:
    """A structurally valid SSHSIG (an all-zero ed25519 key) for tests that never reach ssh-keygen."""
    public_key = _string(b"ssh-ed25519") + _string(bytes(32))
    blob = (b"SSHSIG" + struct.pack(">I", 1) + _string(public_key) + _string(namespace) + _string(b"")
            + _string(b"sha512") + _string(_string(b"ssh-ed25519") + _string(bytes(64))))
    body = base64.b64encode(blob).decode()
    lines = [body[i:i + 70] for i in range(0, len(body), 70)]
    return "-----BEGIN SSH SIGNATURE-----\n" + "\n".join(lines) + "\n-----END SSH SIGNATURE-----\n"


def test_the_signature_reader_takes_the_key_and_namespace_from_the_sshsig_blob():
    info = signature_info(fake_signature(b"git"))
    assert info.namespace == "git" and info.key_type == "ssh-ed25519"
    expected = base64.b64encode(hashlib.sha256(_string(b"ssh-ed25519") + _string(bytes(32))).digest()).decode()
    assert info.fingerprint == "SHA256:" + expected.rstrip("=")
    for bad in ("-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n", fake_signature()[:60]):
        with pytest.raises(ApprovalError, match="signature"):
            signature_info(bad)
