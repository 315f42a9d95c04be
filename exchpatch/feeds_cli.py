"""``exchpatch feeds sync`` and ``exchpatch feeds status`` (docs/feeds.md).

``feeds sync`` runs ``playbooks/feeds_sync.yml`` through ansible-runner (a :class:`~exchpatch.jobs.Job`, like
every other command that changes something) and reads the result the playbook publishes with ``set_stats``
(``feeds_sync``), never its messages. ``feeds status`` only reads the cache's ``state.json``, in process,
through the collection's ``_feedsync`` (as ``exchpatch store`` shares ``_store``).

Exit codes: 0 synced; 1 a feed (or the webhook) failed, the other feeds still synced; 2 bad input, nothing
fetched; 3 synced, and new KEV entries hit running nodes (act now). A failure outranks 3: the new entries
are still in the output, the metric and the webhook. ``feeds status``: 0 fresh enough; 1 the KEV catalog is
too old or missing (a plan would refuse) or a feed's last sync failed.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exchpatch.jobs import REPO, BadInput, EventHandler, Job, JobStatus, play_stats, start

FEEDS = ("kev", "epss", "nvd", "vulnrichment", "osv", "csaf")
URL_FEEDS = ("kev", "epss", "nvd", "vulnrichment", "osv")
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NEW_KEV = 0, 1, 2, 3
STATS_KEY = "feeds_sync"


def default_cache() -> str:
    """``$EXCHPATCH_FEED_CACHE``, else ``<checkout>/.feeds-cache``."""
    return os.environ.get("EXCHPATCH_FEED_CACHE") or str(REPO / ".feeds-cache")


@dataclass
class SyncResult:
    job: dict[str, Any]
    exit_code: int
    message: str | None
    sync: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _file(path: str, what: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise BadInput(f"{what} {path}: no such file; check the path")
    return str(p.resolve())


def _url(value: str, what: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadInput(f"{what} {value!r} is not an http(s) URL; e.g. https://host/path")
    return value


def sync(*, cache: str | None = None, mirror: str | None = None, only: Sequence[str] | None = None,
         sbom: Sequence[str] = (), nvd_api_key_file: str | None = None, proxy: str | None = None,
         webhook_url_file: str | None = None, csaf_providers: Sequence[str] = (),
         urls: dict[str, str] | None = None, nvd_since: str | None = None, timeout: float | None = None,
         inventory: str | None = None, allow_inventory_scripts: bool = False,
         event_handler: EventHandler | None = None) -> Job:
    """Refresh the feed cache (``playbooks/feeds_sync.yml``); the result carries the playbook's ``feeds_sync``.

    Secrets travel as file paths: the playbook's module reads them, so they never land in the run's
    extra-vars file or its events."""
    extravars: dict[str, Any] = {"feeds_cache_dir": str(Path(cache or default_cache()).expanduser().resolve())}
    parent = Path(extravars["feeds_cache_dir"]).parent
    if not parent.is_dir():
        raise BadInput(f"cache {cache}: folder {parent} does not exist; create it or choose another path")
    if mirror is not None:
        if not Path(mirror).expanduser().is_dir():
            raise BadInput(f"mirror {mirror}: no such folder; give the folder holding the mirrored feeds")
        extravars["feeds_mirror"] = str(Path(mirror).expanduser().resolve())
    if only:
        unknown = [f for f in only if f not in FEEDS]
        if unknown:
            raise BadInput(f"unknown feed {', '.join(unknown)}; choose from {', '.join(FEEDS)}")
        extravars["feeds_only"] = list(dict.fromkeys(only))
    if sbom:
        extravars["feeds_sbom"] = [_file(s, "SBOM") for s in sbom]
    if nvd_api_key_file:
        extravars["feeds_nvd_api_key_file"] = _file(nvd_api_key_file, "NVD API key file")
    if webhook_url_file:
        extravars["feeds_webhook_url_file"] = _file(webhook_url_file, "webhook URL file")
    if proxy is not None:
        extravars["feeds_proxy"] = _url(proxy, "proxy") if proxy else ""
    if csaf_providers:
        extravars["feeds_csaf_providers"] = [_url(u, "CSAF provider") for u in csaf_providers]
    if urls:
        for name, value in urls.items():
            if name not in URL_FEEDS:
                raise BadInput(f"--url {name}=...: no URL setting for {name!r}; use one of {', '.join(URL_FEEDS)}")
            _url(value, f"--url {name}")
        extravars["feeds_urls"] = dict(urls)
    if nvd_since is not None:
        import datetime as dt

        try:
            dt.datetime.fromisoformat(nvd_since.replace("Z", "+00:00"))
        except ValueError:
            raise BadInput(f"nvd-since {nvd_since!r} is not an ISO 8601 time; e.g. 2026-11-01T00:00:00Z") from None
        extravars["feeds_nvd_since"] = nvd_since
    if timeout is not None:
        if timeout <= 0:
            raise BadInput(f"timeout {timeout} must be a positive number of seconds")
        extravars["feeds_timeout"] = timeout

    def finish(job: Job) -> SyncResult:
        doc = play_stats(job).get(STATS_KEY)
        if not isinstance(doc, dict):
            msg = f"the feeds_sync playbook ended {job.status} without a result; see {job.artifact_dir}"
            return SyncResult(job.as_json(), EXIT_FAILED, msg)
        if doc.get("bad_input"):
            return SyncResult(job.as_json(), EXIT_BAD_INPUT, "; ".join(doc.get("errors") or []) or "bad input", doc)
        if not doc.get("ok") or job.status is not JobStatus.SUCCESSFUL:
            return SyncResult(job.as_json(), EXIT_FAILED, "; ".join(doc.get("errors") or []) or
                              f"the feeds_sync playbook ended {job.status}", doc)
        hits = (doc.get("new_kev") or {}).get("affecting_nodes") or []
        return SyncResult(job.as_json(), EXIT_NEW_KEV if hits else EXIT_OK, None, doc)

    if inventory is None:  # no fleet: everything runs on the controller, OSV asks about --sbom's packages only
        inv = str(Path(__file__).resolve().parent / "empty_inventory.yml")
    else:
        from exchpatch.api import _check_inventory

        inv = _check_inventory(inventory, allow_inventory_scripts)
    return start("feeds", "feeds_sync.yml", extravars, finish, inventory=inv, event_handler=event_handler)


# --------------------------------------------------------------------------- commands


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    from exchpatch.cli import _table as table

    return table(rows, columns)


def _sync_text(result: SyncResult) -> str:
    doc = result.sync
    rows = [{"feed": name, "status": r.get("status"), "records": r.get("records"), "requests": r.get("requests"),
             "error": r.get("error") or r.get("reason")} for name, r in (doc.get("feeds") or {}).items()]
    out = [_table(rows, ["feed", "status", "records", "requests", "error"]) if rows else "no feed ran"]
    report = doc.get("new_kev") or {}
    if report.get("new"):
        out.append(f"\nnew in KEV since the last sync: {', '.join(report['new'])}")
    for hit in report.get("affecting_nodes") or []:
        out.append(f"  NEW KEV {hit['cve']} hits running nodes: {', '.join(hit['nodes'])}"
                   + (f" (CISA due date {hit['due_date']})" if hit.get("due_date") else ""))
    if report.get("new") and report.get("exposure_read") is False:
        out.append("  (no exposure.json in the cache: run `exchpatch exposure` to match new entries to nodes)")
    hook = doc.get("webhook")
    if hook:
        out.append("webhook: " + ("sent" if hook.get("sent") else f"FAILED: {hook.get('error')}"))
    if result.message:
        out.append(f"\n{result.message}")
    out.append(f"cache: {doc.get('cache_dir') or '-'}; run {result.job.get('id')}")
    return "\n".join(out)


def _url_pairs(values: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for value in values or []:
        name, sep, url = value.partition("=")
        if not sep:
            raise BadInput(f"--url {value!r}: write FEED=URL, e.g. nvd=https://nvd-mirror.internal/rest/json/cves/2.0")
        out[name] = url
    return out


def cmd_sync(args: argparse.Namespace) -> tuple[int, Any, str]:
    from exchpatch.cli import CliError, _start

    args.progress = False
    try:
        urls = _url_pairs(args.url)
    except BadInput as e:
        raise CliError(str(e), EXIT_BAD_INPUT) from None
    result = _start(sync, args, cache=args.cache, mirror=args.mirror, only=args.only, sbom=args.sbom or (),
                    nvd_api_key_file=args.nvd_api_key_file, proxy=args.proxy,
                    webhook_url_file=args.webhook_url_file, csaf_providers=args.csaf_provider or (), urls=urls,
                    nvd_since=args.nvd_since, timeout=args.timeout, inventory=args.inventory,
                    allow_inventory_scripts=args.allow_inventory_scripts)
    if result.exit_code == EXIT_BAD_INPUT:
        raise CliError(result.message or "bad input", EXIT_BAD_INPUT)
    return result.exit_code, result.as_json(), _sync_text(result)


def _age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "never"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def cmd_status(args: argparse.Namespace) -> tuple[int, Any, str]:
    from exchpatch.cli import CliError
    from exchpatch.collection import module_utils

    fs = module_utils("_feedsync")
    cache = str(Path(args.cache or default_cache()).expanduser().resolve())
    now = None
    if args.now:
        now = fs.parse_time(args.now)
        if now is None:
            raise CliError(f"--now {args.now!r} is not an ISO 8601 time; e.g. 2026-11-24T09:00:00Z", EXIT_BAD_INPUT)
    if args.max_age_hours <= 0 or args.kev_max_age_hours <= 0:
        raise CliError("--max-age-hours and --kev-max-age-hours must be positive", EXIT_BAD_INPUT)
    status = fs.freshness(cache, now, args.max_age_hours * 3600, args.kev_max_age_hours * 3600)
    if args.prometheus:
        parent = Path(args.prometheus).expanduser().resolve().parent
        if not parent.is_dir():
            raise CliError(f"--prometheus {args.prometheus}: folder {parent} does not exist", EXIT_BAD_INPUT)
        fs.write_text_atomic(str(Path(args.prometheus).expanduser().resolve()), fs.prometheus(status))
    failing = [n for n, f in status["feeds"].items() if f["last_error"]]
    code = EXIT_FAILED if status["refuse"] or failing else EXIT_OK
    rows = [{"feed": n, "synced": f["synced_at"], "age": _age(f["age_s"]), "records": f["records"],
             "stale": "STALE" if f["stale"] and f["synced_at"] else ("-" if not f["synced_at"] else "no"),
             "last error": (f["last_error"] or {}).get("message")} for n, f in status["feeds"].items()]
    out = [f"feed cache {cache} at {status['now']}", "",
           _table(rows, ["feed", "synced", "age", "records", "stale", "last error"])]
    out += [f"warning: {w}" for w in status["warnings"]]
    hits = (status.get("new_kev") or {}).get("affecting_nodes") or []
    out += [f"NEW KEV {h['cve']} hits running nodes: {', '.join(h['nodes'])}" for h in hits]
    if status["refuse"]:
        out.append(f"PLAN WOULD REFUSE: {status['refuse']}")
    if args.prometheus:
        out.append(f"Prometheus text written to {args.prometheus}")
    return code, status, "\n".join(out)


def add_parser(sub: Any, common: Any) -> None:
    """Register ``feeds sync`` and ``feeds status`` on the top-level subparsers."""
    p = sub.add_parser("feeds", help="the vulnerability feed cache (KEV, EPSS, NVD, vulnrichment, OSV, CSAF)")
    fsub = p.add_subparsers(dest="feeds_command", required=True)
    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument("--cache", metavar="DIR",
                       help="feed cache folder (default: $EXCHPATCH_FEED_CACHE, else <checkout>/.feeds-cache)")

    p = fsub.add_parser("sync", parents=[common, cache],
                        help="refresh the feed cache; exit 0 synced, 1 a feed failed, 2 bad input, "
                             "3 new KEV entries hit running nodes")
    p.add_argument("--mirror", metavar="DIR", help="read every feed from this folder (air-gapped; docs/feeds.md)")
    p.add_argument("--only", nargs="+", metavar="FEED", choices=FEEDS,
                   help=f"sync only these feeds ({', '.join(FEEDS)})")
    p.add_argument("--sbom", nargs="+", metavar="FILE", help="CycloneDX JSON SBOMs whose purls OSV is queried for")
    p.add_argument("--inventory", metavar="INV",
                   help="also query OSV for the packages in every node's running-release SBOM (read live)")
    p.add_argument("--allow-inventory-scripts", action="store_true",
                   help="accept an executable (dynamic) inventory, which Ansible runs as a program")
    p.add_argument("--nvd-api-key-file", metavar="FILE", help="file holding the NVD API key (never logged)")
    p.add_argument("--nvd-since", metavar="ISO8601",
                   help="first NVD sync: from this time instead of the whole NVD (about 300,000 records)")
    p.add_argument("--proxy", metavar="URL", help="HTTP(S) proxy for every request ('' goes direct)")
    p.add_argument("--webhook-url-file", metavar="FILE",
                   help="file holding the webhook URL that is told about new KEV entries hitting nodes (a secret)")
    p.add_argument("--csaf-provider", nargs="+", metavar="URL", help="CSAF provider-metadata.json URLs")
    p.add_argument("--url", action="append", metavar="FEED=URL",
                   help="override a source URL (kev, epss, nvd, vulnrichment, osv); repeatable")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds one request may take (default 60)")
    p.set_defaults(func=cmd_sync)

    p = fsub.add_parser("status", parents=[common, cache],
                        help="age, records and last error per feed; exit 1 when KEV is too old or a sync failed")
    p.add_argument("--prometheus", metavar="FILE", help="also write Prometheus gauges to FILE")
    p.add_argument("--max-age-hours", type=float, default=48.0, help="warn for feeds older than this (default 48)")
    p.add_argument("--kev-max-age-hours", type=float, default=72.0,
                   help="a plan refuses a KEV older than this (default 72)")
    p.add_argument("--now", metavar="ISO8601", help="judge ages at this time (default: now)")
    p.set_defaults(func=cmd_status)
