"""Fixtures for the feed-sync tests: the local feed server (stopped after each test) and options."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _feedsync

from tests.feeds.server import FeedServer, nvd_record

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def server() -> Iterator[FeedServer]:
    srv = FeedServer()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    path = tmp_path / "cache"
    path.mkdir()
    return path


def options(server: FeedServer, cache: Path, **kw) -> _feedsync.SyncOptions:
    """Options pointing every feed at ``server``: short timeouts, no real sleeping on backoff."""
    kw.setdefault("only", ("kev", "epss", "nvd"))
    kw.setdefault("nvd_since", "2026-11-01T00:00:00Z")
    kw.setdefault("timeout", 5.0)
    kw.setdefault("backoff", 0.0)
    kw.setdefault("rate_window", 0.0)
    kw.setdefault("now", lambda: NOW)
    kw["urls"] = {**server.urls(), **kw.get("urls", {})}
    return _feedsync.SyncOptions(cache_dir=str(cache), **kw)


def nvd_records(count: int, start: datetime, step: timedelta) -> list[dict]:
    return [nvd_record(f"CVE-2026-{10000 + i}", start + i * step) for i in range(count)]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256): a cache compared byte for byte."""
    out = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
