"""`exchpatch approve`: an approver signs an approval with their OpenSSH key (docs/approvals.md).

    exchpatch approve --kind emergency|freeze_override|irreversible|downgrade --patch ID --operator NAME
                      --reason TEXT (--not-after TIME | --valid-for 2h) --key ~/.ssh/id_ed25519
                      [--output FILE] [--store] [--allowed-signers FILE]

The canonical document, the file format and the checks are the collection's
(``plugins/module_utils/_approval.py``, imported through :mod:`exchpatch.collection`), so what is
signed here is exactly what the preflight verifies. ssh-keygen asks for the key's passphrase itself
(or uses ssh-agent): this process never sees it. ``--store`` publishes the approval in the
PostgreSQL state store (``EXCHPATCH_STATE_STORE=postgresql`` and ``EXCHPATCH_STATE_STORE_DSN``)
where a preflight finds it by kind, patch and operator; every use verifies the signature again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class ApproveCliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _modules() -> tuple[Any, Any]:
    from exchpatch.collection import module_utils

    return module_utils("_approval"), module_utils("_store")


def _write(path: Path, text: str) -> None:
    """Atomically: a reader never sees half an approval."""
    fd, tmp = tempfile.mkstemp(prefix=".approval-", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_approve(args: argparse.Namespace) -> tuple[int, Any, str]:
    approval, store = _modules()
    now = dt.datetime.now(dt.UTC)
    try:
        if (args.not_after is None) == (args.valid_for is None):
            raise approval.ApprovalError("not_after", "give exactly one of --not-after and --valid-for",
                                         "e.g. --valid-for 2h")
        until = (approval.parse_time(args.not_after) if args.not_after is not None
                 else now + approval.parse_validity(args.valid_for))
        doc = approval.make_document(args.kind, args.patch, args.operator, args.reason, until, now)
        key = Path(args.key).expanduser()
        if not key.is_file():
            raise approval.ApprovalError("key", f"--key {args.key}: no such file",
                                         "give your private key, e.g. --key ~/.ssh/id_ed25519")
        text = doc.canonical()
        signed = approval.load_approval(approval.approval_file_text(text, approval.sign(text, str(key))),
                                        "the new approval")
        fingerprint = approval.signature_info(signed.signature).fingerprint
        approver = None
        if args.allowed_signers:
            # the same checks a preflight makes, so a mistake shows here and not at deploy time
            approver = approval.verify(signed, kinds=[doc.kind], patch_id=doc.patch_id, operator=doc.operator,
                                       allowed_signers=str(Path(args.allowed_signers).expanduser()),
                                       now=now).approver
    except approval.ApprovalError as e:
        raise ApproveCliError(str(e), EXIT_BAD_INPUT) from None
    out = Path(args.output).expanduser() if args.output else Path(f"{doc.kind}-{doc.patch_id}.approval.json")
    if not out.parent.is_dir():
        raise ApproveCliError(f"--output {args.output}: folder {out.parent} does not exist", EXIT_BAD_INPUT)
    _write(out, signed.file_text())
    stored = None
    if args.store:
        try:
            conf = store.settings()
            if not conf.is_postgresql:
                raise ApproveCliError("--store publishes to the PostgreSQL state store: set "
                                      "EXCHPATCH_STATE_STORE=postgresql and EXCHPATCH_STATE_STORE_DSN", EXIT_BAD_INPUT)
            with store.connect(conf) as conn:
                store.ensure_schema(conn)
                stored = approval.publish(conn, signed, approver or os.environ.get("USER") or "unknown", fingerprint)
        except store.StoreError as e:
            raise ApproveCliError(f"{e} (the approval was written to {out})", EXIT_FAILED) from None
    result = {"id": signed.id, "file": str(out.resolve()), "stored": stored, "approver": approver,
              "approver_key_fingerprint": fingerprint, **doc.to_dict()}
    lines = [f"approval {signed.id[:12]}: {doc.kind} of {doc.patch_id} for operator {doc.operator}, valid until "
             f"{result['not_after']}",
             f"  signed with {fingerprint}" + (f" ({approver})" if approver else ""),
             f"  written to {result['file']}"]
    if args.store:
        lines.append("  published in the state store" + ("" if stored else " (it was already there)"))
    return EXIT_OK, result, "\n".join(lines)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register `exchpatch approve` on the driver's subparsers."""
    p = sub.add_parser("approve", parents=[common],
                       help="sign an approval (emergency, freeze override, irreversible, downgrade) with your SSH key")
    p.add_argument("--kind", required=True, choices=["emergency", "freeze_override", "irreversible", "downgrade"])
    p.add_argument("--patch", required=True, metavar="ID", help="catalog id of the patch, e.g. matching-engine-1.4.3")
    p.add_argument("--operator", required=True, metavar="NAME", help="who will run the rollout (not you)")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why you approve (signed and recorded)")
    p.add_argument("--not-after", metavar="TIME", help="expiry, ISO 8601 with a zone, e.g. 2026-11-30T18:00:00Z")
    p.add_argument("--valid-for", metavar="DURATION", help="expiry from now, e.g. 30m, 2h, 1d (at most 7d)")
    p.add_argument("--key", required=True, metavar="FILE", help="your private key (ssh-keygen asks its passphrase)")
    p.add_argument("--output", metavar="FILE", help="approval file (default: ./<kind>-<patch>.approval.json)")
    p.add_argument("--store", action="store_true", help="also publish it in the PostgreSQL state store")
    p.add_argument("--allowed-signers", metavar="FILE",
                   help="check the approval against the team's allowed_signers file before handing it over")
    p.set_defaults(func=cmd_approve)
