"""``exchpatch feeds`` commands (issue 14); placeholder until they land."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any, common: Any) -> None:
    """Register the commands on the top-level subparsers (nothing yet)."""
