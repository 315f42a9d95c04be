"""``exchpatch exposure``: which node is exposed to which CVE now (``playbooks/exposure.yml``).

    exchpatch exposure [--inventory INV | --facts FILE] [--osv FILE...] [--nvd FILE] [--vex FILE...]
                       [--catalog DIR] [--cache DIR] [--output FILE] [--json]

Defaults read the feed cache (``--cache``, else ``$EXCHPATCH_FEED_CACHE``, else ``<checkout>/.feeds-cache``):
``osv.json`` and, when present, ``nvd.json``. The result is saved as ``exposure.json`` in the cache (FEEDS reads
it to report new KEV entries that hit a running node) and, with ``--output``, to that file too. Like every
command, the work runs in the collection's playbook through ansible-runner; this module only validates, starts
the job and reads the document the playbook wrote.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exchpatch.jobs import BadInput, EventHandler, Job, StatusHandler, data_dir, refuse_template_markers, start

__all__ = ["ExposureResult", "add_parser", "exposure", "feed_cache_dir"]


def feed_cache_dir(cache: str | None = None) -> Path:
    """The feed cache: ``cache``, else the feeds commands' default (``$EXCHPATCH_FEED_CACHE``, else
    ``<checkout>/.feeds-cache``)."""
    from exchpatch.feeds_cli import default_cache

    return Path(cache or default_cache()).expanduser()


@dataclass
class ExposureResult:
    job: dict[str, Any]
    exit_code: int
    message: str | None
    exposure: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _write_atomic(path: Path, text: str) -> None:
    from exchpatch.collection import module_utils

    module_utils("_safe_io").write_atomic(str(path), text.encode("utf-8"), prefix=".exposure-")


def exposure(*, osv: Sequence[str] | None = None, nvd: str | None = None, vex: Sequence[str] = (),
             catalog: str | None = None, inventory: str | Path | None = None, facts: str | None = None,
             cache: str | None = None, generated_at: str | None = None, allow_inventory_scripts: bool = False,
             event_handler: EventHandler | None = None, status_handler: StatusHandler | None = None) -> Job:
    """Start ``playbooks/exposure.yml``; ``job.wait()`` returns an :class:`ExposureResult` and, on success, the
    document is also saved as ``exposure.json`` in the feed cache."""
    from exchpatch import api

    for name, value in (("osv", osv), ("nvd", nvd), ("vex", vex), ("catalog", catalog), ("inventory", inventory),
                        ("facts", facts), ("cache", cache), ("generated_at", generated_at)):
        refuse_template_markers(value, name)
    if inventory is not None and facts is not None:
        raise BadInput("give an inventory (live SBOMs from the nodes) or a facts file (offline), not both")
    folder = feed_cache_dir(cache)
    if osv:
        osv_files = [api._check_file(f, "OSV file") for f in osv]
    else:
        default = folder / "osv.json"
        if not default.is_file():
            raise BadInput(f"no OSV records: {default} does not exist; run `exchpatch feeds sync` or give --osv FILE")
        osv_files = [str(default.resolve())]
    extravars: dict[str, Any] = {"exposure_osv": osv_files}
    if nvd is not None:
        extravars["exposure_nvd"] = api._check_file(nvd, "NVD file")
    elif not osv and (folder / "nvd.json").is_file():
        extravars["exposure_nvd"] = str((folder / "nvd.json").resolve())
    if vex:
        extravars["exposure_vex"] = [api._check_file(f, "VEX file") for f in vex]
    if catalog is not None:
        cat = Path(catalog).expanduser()
        if not cat.is_dir():
            raise BadInput(f"catalog {catalog}: no such folder; check the path")
        extravars["exposure_catalog"] = str(cat.resolve())
    if facts is not None:
        extravars["exposure_facts_file"] = api._check_file(facts, "facts file")
        inventory = inventory or str(Path(api.__file__).resolve().parent / "empty_inventory.yml")
    if generated_at is not None:
        try:
            dt.datetime.fromisoformat(generated_at.replace("Z", "+00:00"))
        except ValueError:
            raise BadInput(f"now {generated_at!r} is not an ISO 8601 time; e.g. 2026-11-24T12:00:00Z") from None
        extravars["exposure_generated_at"] = generated_at
    dest = data_dir() / f"exposure-{os.getpid()}-{id(extravars):x}.json"
    extravars["exposure_dest"] = str(dest)

    def finish(job: Job) -> ExposureResult:
        try:
            ok = job.rc == 0 and dest.is_file()
            text = dest.read_text() if ok else None
        finally:
            dest.unlink(missing_ok=True)
        doc = json.loads(text) if text else None
        if doc is not None:
            _write_atomic(folder / "exposure.json", text)
        msg = None if ok else (api._first_failure_msg(job)
                               or f"exposure playbook ended {job.status}; see {job.artifact_dir}")
        return ExposureResult(job=job.as_json(), exit_code=api._exit_code(job, ok), message=msg, exposure=doc)

    return start("exposure", "exposure.yml", extravars, finish,
                 inventory=api._check_inventory(inventory, allow_inventory_scripts),
                 event_handler=event_handler, status_handler=status_handler)


# --------------------------------------------------------------------------- CLI


def exposure_text(doc: dict[str, Any]) -> str:
    from exchpatch.cli import _table

    rows = [{
        "cve": cve, "nodes": len(e["nodes"]), "packages": ", ".join(e["packages"]) or "-",
        "fixed by": ", ".join(e["fixed_by"] + [f"{p} (claimed)" for p in e["claimed_by"]]) or "-",
        "mitigate": "NEEDS MITIGATION" if e["needs_mitigation"] else "-",
        "not affected (VEX)": len(e["not_affected"]),
    } for cve, e in doc["cves"].items() if e["nodes"] or e["not_affected"]]
    out = [f"exposure at {doc['generated_at']}: {sum(1 for e in doc['cves'].values() if e['nodes'])} CVE(s) on "
           f"{sum(1 for n in doc['nodes'].values() if n['cves'])} of {len(doc['nodes'])} node(s)", ""]
    out.append(_table(rows, ["cve", "nodes", "packages", "fixed by", "mitigate", "not affected (VEX)"])
               if rows else "no node is exposed to a known CVE")
    for cve, e in doc["cves"].items():
        for na in e["not_affected"]:
            out.append(f"   {cve} not affected on {na['node']} ({na['package']}): {na['justification']} "
                       f"[{na['statement']}]")
    for pid, p in doc["patches"].items():
        lines = [f"   flagged {f['cve']}: {f['reason']} (from {f['from']})" for f in p["flagged"]]
        lines += [f"   derived {c}: removed by the patch but not in its fixes" for c in p["derived"]]
        lines += [f"   unverified {u['cve']}: {u['reason']}" for u in p["unverified"]]
        if lines:
            out += [f"\n{pid}: fixes check", *lines]
    if doc.get("warnings"):
        out += ["\nwarnings:", *(f"   {w}" for w in doc["warnings"])]
    return "\n".join(out)


def cmd_exposure(args: Any) -> tuple[int, Any, str]:
    from exchpatch.cli import EXIT_BAD_INPUT, EXIT_OK, CliError, _failed, _start

    args.progress = False
    result = _start(exposure, args, osv=args.osv, nvd=args.nvd, vex=args.vex or (), catalog=args.catalog,
                    inventory=args.inventory, facts=args.facts, cache=args.cache, generated_at=args.now,
                    allow_inventory_scripts=args.allow_inventory_scripts)
    _failed(result)
    if result.exit_code:
        raise CliError(result.message or "exposure failed", result.exit_code)
    if args.output:
        try:
            _write_atomic(Path(args.output).expanduser(), json.dumps(result.exposure, indent=2) + "\n")
        except OSError as e:
            raise CliError(f"--output {args.output}: cannot write ({e.strerror}); check the folder", EXIT_BAD_INPUT) \
                from None
    return EXIT_OK, result.exposure, exposure_text(result.exposure)


def add_parser(sub: Any, common: Any) -> None:
    """Register ``exchpatch exposure`` on the top-level subparsers."""
    p = sub.add_parser("exposure", parents=[common],
                       help="which node is exposed to which CVE now, from each release's SBOM")
    p.add_argument("--inventory", metavar="INV",
                   help="inventory for live SBOMs from the nodes (default: the testbed's)")
    p.add_argument("--facts", metavar="FILE",
                   help='offline: {"nodes": [{"name", "component", "version", "sbom": "<path>"}], '
                        '"patch_sboms": {"<patch id>": "<path>"}}')
    p.add_argument("--osv", action="append", metavar="FILE",
                   help="OSV records (default: the feed cache's osv.json); repeatable")
    p.add_argument("--nvd", metavar="FILE",
                   help="NVD 2.0 document for CPE matching where OSV has no record (default: the cache's nvd.json "
                        "when --osv is not given)")
    p.add_argument("--vex", action="append", metavar="FILE", help="OpenVEX or CycloneDX VEX document; repeatable")
    p.add_argument("--catalog", metavar="DIR", help="patch catalog: which patch removes each CVE, fixes check")
    p.add_argument("--cache", metavar="DIR",
                   help="feed cache folder (default: $EXCHPATCH_FEED_CACHE, else <checkout>/.feeds-cache); "
                        "exposure.json is saved there")
    p.add_argument("--now", metavar="ISO8601", help="time written into the result (default: now)")
    p.add_argument("--output", metavar="FILE", help="also write the exposure JSON document to FILE")
    p.add_argument("--allow-inventory-scripts", action="store_true",
                   help="accept an executable (dynamic) inventory, which Ansible runs as a program")
    p.set_defaults(func=cmd_exposure)
