# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one shape of a bad-input error: the file, the record, what is wrong, and the fix."""

from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """Bad input; ``str()`` is ``"<path>: <record>: <message>; <fix>"`` (record omitted when None)."""

    def __init__(self, path: str, record: str | None, message: str, fix: str) -> None:
        self.path = path
        self.record = record
        self.message = message
        self.fix = fix
        where = f"{path}: {record}" if record else path
        super().__init__(f"{where}: {message}; {fix}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.path, self.record, self.message, self.fix))
