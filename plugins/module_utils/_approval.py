# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Signed approvals: who approved an override, proven by an OpenSSH signature.

An emergency override, a freeze-window override, an irreversible migration and a downgrade each
need an approval *signed* by an approver listed in an OpenSSH ``allowed_signers`` file
(``ssh-keygen(1)``, ALLOWED SIGNERS). The signed bytes are the approval's canonical document: a
JSON object with exactly the keys of :class:`Document`, keys sorted, no whitespace, ASCII only
(``json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``), times as
``YYYY-MM-DDTHH:MM:SSZ`` (UTC). A document that is not byte-for-byte canonical is refused, so one
approval has exactly one text. The signature is an armored SSHSIG (``PROTOCOL.sshsig``) made with
``ssh-keygen -Y sign -n exchpatch-approval``.

An approval file is one JSON object: ``{"format": "exchpatch-approval/1", "document": <the
canonical document, as a string>, "signature": <the armored signature>}``. Its id is the SHA-256 of
the document. Verification learns the approver's identity from the signature
(``ssh-keygen -Y find-principals``), then checks it (``ssh-keygen -Y verify -n exchpatch-approval
-I <identity>``), and refuses, each with one line naming the field and the fix: a kind, patch or
operator other than the run's, an expired approval, an unknown signer, a bad signature, and an
approver who is the operator. Clock-free: ``now`` is passed in (the state store's time when there
is one). psycopg is imported lazily (through ``_store``): the file path never needs it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FORMAT = "exchpatch-approval/1"
NAMESPACE = "exchpatch-approval"
KINDS = ("emergency", "freeze_override", "irreversible", "downgrade")
# What an approval lets through, for messages and docs.
KIND_MEANS = {
    "emergency": "an emergency rollout that overrides a freeze window",
    "freeze_override": "a planned rollout inside a freeze window",
    "irreversible": "a patch whose migration cannot be rolled back",
    "downgrade": "a release older than one a node runs",
}
DOCUMENT_KEYS = ("format", "issued_at", "kind", "nonce", "not_after", "operator", "patch_id", "reason")
# One approval is for one change: an approver may not sign a standing permission.
MAX_VALIDITY = dt.timedelta(days=7)
MAX_FILE_BYTES = 64 * 1024
MAX_REASON = 500
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_PERSON_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_ARMOR_RE = re.compile(r"^-----BEGIN SSH SIGNATURE-----\n([A-Za-z0-9+/=\n]+)\n-----END SSH SIGNATURE-----\n?$")
# Characters that make an allowed_signers principal a pattern (fnmatch, negation, lists).
_PATTERN_CHARS = set("*?[]!,")
SSH_KEYGEN_TIMEOUT = 30


class ApprovalError(Exception):
    """An approval is refused or cannot be made; ``str()`` is one line naming the field and the fix."""

    def __init__(self, field: str, message: str, fix: str) -> None:
        super().__init__(f"{message}; {fix}")
        self.field = field
        self.message = message
        self.fix = fix

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.field, self.message, self.fix))

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": str(self)}


# --------------------------------------------------------------------------- time


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime(TIME_FORMAT)


def parse_time(value: Any, field: str = "not_after") -> dt.datetime:
    """An ISO 8601 time with a zone (``Z`` or an offset), to an aware UTC datetime."""
    text = str(value).strip() if value is not None else ""
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ApprovalError(field, f"{field} {text!r} is not an ISO 8601 time",
                            "give e.g. 2026-11-30T18:00:00Z") from None
    if moment.tzinfo is None:
        raise ApprovalError(field, f"{field} {text!r} has no time zone", "add Z (UTC) or an offset, e.g. "
                            "2026-11-30T18:00:00Z")
    return moment.astimezone(dt.UTC).replace(microsecond=0)


_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")


def parse_validity(value: str) -> dt.timedelta:
    """``90m``, ``2h``, ``1d`` to a timedelta."""
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ApprovalError("valid_for", f"valid-for {value!r} is not a duration", "give e.g. 30m, 2h or 1d")
    amount, unit = int(match.group(1)), match.group(2)
    delta = dt.timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: amount})
    if delta <= dt.timedelta(0):
        raise ApprovalError("valid_for", f"valid-for {value!r} is not positive", "give e.g. 2h")
    return delta


# --------------------------------------------------------------------------- document


@dataclass(frozen=True)
class Document:
    """What an approver signs: this kind of change, of this patch, by this operator, until ``not_after``."""

    kind: str
    patch_id: str
    operator: str
    reason: str
    not_after: dt.datetime
    issued_at: dt.datetime
    nonce: str

    def to_dict(self) -> dict[str, str]:
        return {"format": FORMAT, "issued_at": format_time(self.issued_at), "kind": self.kind, "nonce": self.nonce,
                "not_after": format_time(self.not_after), "operator": self.operator, "patch_id": self.patch_id,
                "reason": self.reason}

    def canonical(self) -> str:
        return canonical_json(self.to_dict())


def canonical_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _check_fields(kind: Any, patch_id: Any, operator: Any, reason: Any) -> None:
    if kind not in KINDS:
        raise ApprovalError("kind", f"kind {kind!r} is not an approval kind", f"use one of {', '.join(KINDS)}")
    if not isinstance(patch_id, str) or not _ID_RE.match(patch_id):
        raise ApprovalError("patch_id", f"patch_id {patch_id!r} is not a catalog id",
                            "give the patch's id, e.g. matching-engine-1.4.3")
    if not isinstance(operator, str) or not _PERSON_RE.match(operator):
        raise ApprovalError("operator", f"operator {operator!r} is not a user name",
                            "use letters, digits and . _ @ + - only, e.g. alice")
    if not isinstance(reason, str) or not reason.strip():
        raise ApprovalError("reason", "reason is empty", "say in a sentence why this change needs the approval")
    if len(reason) > MAX_REASON or any(ord(c) < 32 or ord(c) == 127 for c in reason):
        raise ApprovalError("reason", f"reason is longer than {MAX_REASON} characters or has control characters",
                            "use one line of plain text")


def make_document(kind: str, patch_id: str, operator: str, reason: str, not_after: dt.datetime,
                  issued_at: dt.datetime, nonce: str | None = None) -> Document:
    """A new document to sign; refuses bad fields, a ``not_after`` not after ``issued_at`` and a standing one."""
    _check_fields(kind, patch_id, operator, reason)
    issued = issued_at.astimezone(dt.UTC).replace(microsecond=0)
    until = not_after.astimezone(dt.UTC).replace(microsecond=0)
    if until <= issued:
        raise ApprovalError("not_after", f"not_after {format_time(until)} is not after now ({format_time(issued)})",
                            "give a time in the future or --valid-for, e.g. 2h")
    if until - issued > MAX_VALIDITY:
        raise ApprovalError("not_after", f"not_after {format_time(until)} is more than {MAX_VALIDITY.days} days "
                            "away", "an approval is for one change: give at most 7d")
    nonce = nonce if nonce is not None else os.urandom(16).hex()
    if not _NONCE_RE.match(nonce):
        raise ApprovalError("nonce", f"nonce {nonce!r} is not 32 hex digits", "leave it out to get a random one")
    return Document(kind, patch_id, operator, reason.strip(), until, issued, nonce)


def parse_document(text: Any, source: str = "approval") -> Document:
    """The document an approver signed, refused unless it is exactly the canonical text of valid fields."""
    fix = "make the approval again with exchpatch approve; do not edit an approval file"
    if not isinstance(text, str):
        raise ApprovalError("document", f"{source}: the document is not a string", fix)
    try:
        doc = json.loads(text)
    except ValueError:
        raise ApprovalError("document", f"{source}: the document is not JSON", fix) from None
    if not isinstance(doc, dict) or sorted(doc) != sorted(DOCUMENT_KEYS):
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ApprovalError("document", f"{source}: the document's keys are {keys}, expected "
                            f"{list(DOCUMENT_KEYS)}", fix)
    if doc["format"] != FORMAT:
        raise ApprovalError("format", f"{source}: format {doc['format']!r} is not {FORMAT}",
                            "make the approval with this version of exchpatch approve")
    for key in ("not_after", "issued_at"):
        if not isinstance(doc[key], str) or not _TIME_RE.match(doc[key]):
            raise ApprovalError(key, f"{source}: {key} {doc[key]!r} is not YYYY-MM-DDTHH:MM:SSZ", fix)
    try:
        _check_fields(doc["kind"], doc["patch_id"], doc["operator"], doc["reason"])
    except ApprovalError as e:
        raise ApprovalError(e.field, f"{source}: {e.message}", fix) from None
    if not isinstance(doc["nonce"], str) or not _NONCE_RE.match(doc["nonce"]):
        raise ApprovalError("nonce", f"{source}: nonce is not 32 hex digits", fix)
    if canonical_json(doc) != text:
        raise ApprovalError("document", f"{source}: the document is not in canonical form", fix)
    return Document(doc["kind"], doc["patch_id"], doc["operator"], doc["reason"], parse_time(doc["not_after"]),
                    parse_time(doc["issued_at"], "issued_at"), doc["nonce"])


# --------------------------------------------------------------------------- approval (document + signature)


@dataclass(frozen=True)
class Approval:
    """A signed document as found in a file or the state store; not yet verified."""

    document_text: str
    signature: str
    document: Document
    source: str

    @property
    def id(self) -> str:
        return approval_id(self.document_text)

    def file_text(self) -> str:
        return approval_file_text(self.document_text, self.signature)


def approval_id(document_text: str) -> str:
    return hashlib.sha256(document_text.encode("ascii")).hexdigest()


def approval_file_text(document_text: str, signature: str) -> str:
    return json.dumps({"format": FORMAT, "document": document_text, "signature": signature}, indent=2) + "\n"


def load_approval(text: str, source: str) -> Approval:
    """An approval file's text to an :class:`Approval` (document parsed, signature armor checked)."""
    fix = "give the file exchpatch approve wrote (JSON with format, document and signature)"
    try:
        doc = json.loads(text)
    except ValueError:
        raise ApprovalError("approval_file", f"{source}: not JSON", fix) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("document"), str) \
            or not isinstance(doc.get("signature"), str):
        raise ApprovalError("approval_file", f"{source}: not an {FORMAT} approval", fix)
    document = parse_document(doc["document"], source)
    signature_info(doc["signature"], source)
    return Approval(doc["document"], doc["signature"], document, source)


def read_approval_file(path: str) -> Approval:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ApprovalError("approval_file", f"approval file {path}: cannot read it ({e.strerror})",
                            "check the path (preflight_approval_file / --approval)") from None
    if len(data) > MAX_FILE_BYTES:
        raise ApprovalError("approval_file", f"approval file {path}: larger than {MAX_FILE_BYTES} bytes",
                            "give the file exchpatch approve wrote")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApprovalError("approval_file", f"approval file {path}: not UTF-8 text",
                            "give the file exchpatch approve wrote") from None
    return load_approval(text, f"approval file {path}")


@dataclass(frozen=True)
class SignatureInfo:
    namespace: str
    fingerprint: str
    key_type: str


def _ssh_string(blob: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(blob):
        raise ValueError("truncated")
    (size,) = struct.unpack(">I", blob[pos:pos + 4])
    end = pos + 4 + size
    if end > len(blob):
        raise ValueError("truncated")
    return blob[pos + 4:end], end


def signature_info(signature: str, source: str = "approval") -> SignatureInfo:
    """The signer's key fingerprint and the namespace, read from the armored SSHSIG (PROTOCOL.sshsig);
    nothing here is trusted before ssh-keygen verified the signature."""
    fix = "make the approval again with exchpatch approve (ssh-keygen -Y sign -n exchpatch-approval)"
    match = _ARMOR_RE.match(signature.replace("\r\n", "\n")) if isinstance(signature, str) else None
    if not match:
        raise ApprovalError("signature", f"{source}: the signature is not an armored SSH signature", fix)
    try:
        blob = base64.b64decode("".join(match.group(1).split()), validate=True)
        if blob[:6] != b"SSHSIG":
            raise ValueError("magic")
        pos = 10  # MAGIC_PREAMBLE, then uint32 version
        public_key, pos = _ssh_string(blob, pos)
        namespace, pos = _ssh_string(blob, pos)
        key_type, _rest = _ssh_string(public_key, 0)
    except (ValueError, binascii.Error):
        raise ApprovalError("signature", f"{source}: the signature is not a valid SSHSIG blob", fix) from None
    digest = base64.b64encode(hashlib.sha256(public_key).digest()).decode("ascii").rstrip("=")
    return SignatureInfo(namespace.decode("utf-8", "replace"), f"SHA256:{digest}",
                         key_type.decode("ascii", "replace"))


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Verified:
    """An approval that passed every check; what the audit trail records."""

    id: str
    kind: str
    patch_id: str
    operator: str
    reason: str
    not_after: str
    approver: str
    fingerprint: str
    source: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind, "patch_id": self.patch_id, "operator": self.operator,
                "reason": self.reason, "not_after": self.not_after, "approver": self.approver,
                "approver_key_fingerprint": self.fingerprint, "source": self.source}


def check_scope(document: Document, kinds: Sequence[str], patch_id: str, operator: str, now: dt.datetime,
                source: str = "approval") -> None:
    """Refuse an approval for another kind, patch or operator, or one whose ``not_after`` has passed."""
    if document.kind not in kinds:
        want = " or ".join(kinds)
        raise ApprovalError("kind", f"{source}: kind is {document.kind!r} but this run needs {want} "
                            f"({KIND_MEANS.get(kinds[0], kinds[0])})",
                            f"ask an approver for one: exchpatch approve --kind {kinds[0]} --patch {patch_id} "
                            f"--operator {operator} ...")
    if document.patch_id != patch_id:
        raise ApprovalError("patch_id", f"{source}: patch_id is {document.patch_id!r} but this run rolls out "
                            f"{patch_id!r}", f"ask an approver for an approval with --patch {patch_id}")
    if document.operator.casefold() != operator.casefold():
        raise ApprovalError("operator", f"{source}: operator is {document.operator!r} but this run's operator is "
                            f"{operator!r}", f"run it as {document.operator}, or ask an approver for an approval "
                            f"with --operator {operator}")
    if now >= document.not_after:
        raise ApprovalError("not_after", f"{source}: expired at {format_time(document.not_after)} (now "
                            f"{format_time(now)})", "ask the approver for a fresh approval")


def _ssh_keygen(ssh_keygen: str, args: Sequence[str], data: bytes | None) -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which(ssh_keygen) or ssh_keygen
    try:
        return subprocess.run([exe, *args], input=data if data is not None else b"", capture_output=True,
                              timeout=SSH_KEYGEN_TIMEOUT, check=False, env={"PATH": os.environ.get("PATH", ""),
                                                                            "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ApprovalError("ssh_keygen", f"cannot run {ssh_keygen} ({e})",
                            "install OpenSSH 8.9 or later on the controller (ssh-keygen -Y)") from None


def _first_line(output: bytes) -> str:
    lines = output.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "no output"


def check_allowed_signers(path: str | None) -> str:
    if not path:
        raise ApprovalError("allowed_signers", "no allowed_signers file is configured",
                            "set exchange_allowed_signers in the inventory to the file that lists the approvers' "
                            "keys (see docs/approvals.md)")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ApprovalError("allowed_signers", f"allowed_signers file {path}: no such readable file",
                            "check exchange_allowed_signers in the inventory")
    return path


def verify(approval: Approval, *, kinds: Sequence[str], patch_id: str, operator: str, allowed_signers: str,
           now: dt.datetime, ssh_keygen: str = "ssh-keygen") -> Verified:
    """Every check, cheapest first; returns the approver's identity and key fingerprint or raises ApprovalError."""
    source = approval.source
    check_scope(approval.document, kinds, patch_id, operator, now, source)
    check_allowed_signers(allowed_signers)
    info = signature_info(approval.signature, source)
    if info.namespace != NAMESPACE:
        raise ApprovalError("signature", f"{source}: signed for namespace {info.namespace!r}, not {NAMESPACE!r}",
                            f"sign it with ssh-keygen -Y sign -n {NAMESPACE} (exchpatch approve does)")
    with tempfile.TemporaryDirectory(prefix="exchpatch-approval-") as tmp:
        sig_path = os.path.join(tmp, "approval.sig")
        with open(sig_path, "w", encoding="ascii") as fh:
            fh.write(approval.signature.replace("\r\n", "\n"))
        found = _ssh_keygen(ssh_keygen, ["-Y", "find-principals", "-s", sig_path, "-f", allowed_signers], None)
        principals = [p.strip() for p in found.stdout.decode("utf-8", "replace").splitlines() if p.strip()]
        if found.returncode != 0 or not principals:
            raise ApprovalError("signer", f"{source}: the signer's key {info.fingerprint} is not in "
                                f"{allowed_signers}", "have an approver listed there sign it, or add the "
                                "approver's public key to the allowed_signers file")
        patterns = [p for p in principals if _PATTERN_CHARS & set(p)]
        if patterns:
            raise ApprovalError("signer", f"{source}: {allowed_signers} lists the signer's key {info.fingerprint} "
                                f"under the pattern {patterns[0]!r}", "list each approver's key under one exact "
                                "name, so the approver is known")
        if len(principals) > 1:
            raise ApprovalError("signer", f"{source}: {allowed_signers} lists the signer's key {info.fingerprint} "
                                f"under several names ({', '.join(principals)})",
                                "list each approver's key under one name")
        identity = principals[0]
        checked = _ssh_keygen(ssh_keygen, ["-Y", "verify", "-n", NAMESPACE, "-I", identity, "-f", allowed_signers,
                                           "-s", sig_path], approval.document_text.encode("ascii"))
    if checked.returncode != 0:
        raise ApprovalError("signature", f"{source}: the signature of {identity} ({info.fingerprint}) does not "
                            f"verify ({_first_line(checked.stderr)})", "the document was changed after signing, or "
                            "the key is not valid now or not for exchpatch-approval; ask for a fresh approval")
    if identity.casefold() == operator.casefold() or identity.split("@", 1)[0].casefold() == \
            operator.split("@", 1)[0].casefold():
        raise ApprovalError("approver", f"{source}: approver {identity!r} is the operator {operator!r}",
                            "a second person listed in the allowed_signers file must approve")
    doc = approval.document
    return Verified(approval.id, doc.kind, doc.patch_id, doc.operator, doc.reason, format_time(doc.not_after),
                    identity, info.fingerprint, source)


def verify_any(approvals: Sequence[Approval], **kwargs: Any) -> Verified:
    """The first approval of ``approvals`` that verifies; else the refusal of the most specific one
    (one of the right kind over one of another kind)."""
    errors: list[ApprovalError] = []
    for approval in approvals:
        try:
            return verify(approval, **kwargs)
        except ApprovalError as e:
            errors.append(e)
    if not errors:
        raise ApprovalError("approval", "no approval given", "pass one")
    return _raise_best(errors)


def _raise_best(errors: list[ApprovalError]) -> Verified:
    specific = [e for e in errors if e.field != "kind"]
    raise (specific or errors)[0]


# --------------------------------------------------------------------------- signing (the approver's side)


def sign(document_text: str, key_path: str, ssh_keygen: str = "ssh-keygen") -> str:
    """Sign with ``ssh-keygen -Y sign``. The document goes in a file, not stdin, and stdin and stderr are the
    caller's: ssh-keygen asks for a passphrase itself (terminal, ssh-agent or SSH_ASKPASS), never seen here."""
    exe = shutil.which(ssh_keygen) or ssh_keygen
    with tempfile.TemporaryDirectory(prefix="exchpatch-approve-") as tmp:
        doc_path = os.path.join(tmp, "approval.json")
        with open(doc_path, "w", encoding="ascii") as fh:
            fh.write(document_text)
        try:
            done = subprocess.run([exe, "-Y", "sign", "-n", NAMESPACE, "-f", key_path, doc_path],
                                  stdout=subprocess.DEVNULL, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ApprovalError("key", f"cannot run {ssh_keygen} ({e})", "install OpenSSH 8.9 or later") from None
        try:
            with open(doc_path + ".sig", encoding="ascii") as fh:
                signature = fh.read()
        except OSError:
            signature = ""
    if done.returncode != 0 or "BEGIN SSH SIGNATURE" not in signature:
        raise ApprovalError("key", f"ssh-keygen could not sign with {key_path} (exit {done.returncode})",
                            "give your private key (--key ~/.ssh/id_ed25519) and its passphrase when asked")
    return signature


# --------------------------------------------------------------------------- the state store (postgresql)


def publish(conn: Any, approval: Approval, approver: str, fingerprint: str) -> bool:
    """Store a signed approval for other controllers to find; True when it was new. The row's approver and
    fingerprint are hints for people: every use verifies the signature again."""
    doc = approval.document
    with conn.cursor() as cur:
        cur.execute("INSERT INTO exchpatch_approval (id, kind, patch_id, operator, approver, fingerprint, not_after, "
                    "document, signature) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                    (approval.id, doc.kind, doc.patch_id, doc.operator, approver, fingerprint, doc.not_after,
                     approval.document_text, approval.signature))
        return cur.rowcount == 1


def find_stored(conn: Any, kinds: Sequence[str], patch_id: str, operator: str, limit: int = 20) -> list[Approval]:
    """Unexpired stored approvals for (kind, patch, operator), newest first; rows that do not parse are skipped
    (they could never verify)."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, document, signature FROM exchpatch_approval WHERE kind = ANY(%s) AND patch_id = %s "
                    "AND lower(operator) = lower(%s) AND not_after > now() ORDER BY created_at DESC, id LIMIT %s",
                    (list(kinds), patch_id, operator, limit))
        rows = cur.fetchall()
    found = []
    for row_id, document, signature in rows:
        try:
            found.append(load_approval(approval_file_text(document, signature), f"stored approval {row_id[:12]}"))
        except ApprovalError:
            continue
    return found
