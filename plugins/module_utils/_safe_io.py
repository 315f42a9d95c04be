# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Bounded reading and strict parsing of the files a plan is made from (feeds, catalog entries, facts).

Every input file may come from someone who wants the controller to hang, run out of memory or
believe something false, so:

- only regular files are read: a FIFO, a device (``/dev/zero``), a socket or a directory is refused
  before a single byte is read (the file is opened non-blocking and checked with ``fstat`` on the
  open descriptor, so a symlink or a swap between check and read changes nothing);
- every read is capped (:data:`MAX_FEED_SIZE`, :data:`MAX_CATALOG_ENTRY_SIZE`, :data:`MAX_FACTS_SIZE`),
  and so is gzip decompression, chunk by chunk: a gzip bomb stops at the cap;
- JSON is strict: duplicate keys, ``NaN``/``Infinity``, numbers longer than :data:`MAX_NUMBER_DIGITS`
  digits, nesting deeper than :data:`MAX_DEPTH` and lone surrogates are refused;
- YAML is strict: duplicate keys and aliases (``*name``, the billion-laughs bomb) are refused;
- identifiers are ASCII: :func:`non_ascii` names the first character that is not.

Every problem raises the caller's :class:`InputError` subclass naming the file, the problem and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import tempfile
import traceback
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from ansible_collections.exchangeops.patching.plugins.module_utils._errors import InputError

try:
    import yaml
except ImportError:
    HAS_YAML = False
    YAML_IMPORT_ERROR: str | None = traceback.format_exc()
    _SafeLoader: Any = object
else:
    HAS_YAML = True
    YAML_IMPORT_ERROR = None
    _SafeLoader = yaml.SafeLoader

MiB = 1024 * 1024
# The largest real inputs: an NVD 2.0 yearly feed (~150 MiB uncompressed), the EPSS CSV (~15 MiB),
# the KEV catalog (~2 MiB). A catalog entry is a few hundred bytes; a fleet facts file a few KiB per node.
MAX_FEED_SIZE = 256 * MiB
MAX_CATALOG_ENTRY_SIZE = 1 * MiB
MAX_FACTS_SIZE = 64 * MiB
MAX_DEPTH = 64  # the deepest real feed (CSAF product trees) nests about 12 levels
MAX_NUMBER_DIGITS = 64  # a CVSS score, an EPSS probability or a count needs a handful
CHUNK = 1 * MiB

ErrorType = Callable[[str, "str | None", str, str], InputError]

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def human_size(size: int) -> str:
    """``268435456`` -> ``"256 MiB"``; sizes below 1 KiB in bytes."""
    for unit, factor in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", 1024)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


def describe_mode(mode: int) -> str:
    """``"a FIFO (named pipe)"``, ``"a character device"``, ... for an ``st_mode`` that is not a regular file."""
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def _not_regular(path: str, mode: int, what: str, error: ErrorType) -> InputError:
    fix = (f"give the path of the {what} file itself, not a directory" if stat.S_ISDIR(mode)
           else f"give the path of a regular {what} file (copy the data into a file first)")
    return error(path, None, f"is {describe_mode(mode)}, not a regular file", fix)


def open_regular(path: str, what: str, error: ErrorType = InputError) -> int:
    """An fd open for reading on a regular file; never blocks on a FIFO or a device. The caller closes it."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(path, None, "file not found", f"check the path of the {what}") from None
    except IsADirectoryError:
        raise error(path, None, "is a directory, not a file", f"give the path of the {what} itself") from None
    except OSError as exc:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):  # a socket cannot even be opened (ENXIO)
            raise _not_regular(path, mode, what, error) from None
        raise error(path, None, f"cannot open the file: {exc.strerror or exc}",
                    "check the file's permissions") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise error(path, None, f"cannot stat the file: {exc.strerror or exc}", "check the file") from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(path, mode, what, error)
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return fd


def _too_big(path: str, size: str, limit: int, what: str, error: ErrorType, option: str | None) -> InputError:
    how = f"raise {option}" if option else "split it"
    return error(path, None, f"{what} is larger than the limit of {human_size(limit)} ({size})",
                 f"check that this is the right file, or {how}")


def capped_chunks(fd: int, max_size: int | None, too_big: Callable[[], Exception]) -> Iterator[bytes]:
    """The chunks read from ``fd`` until its end; ``raise too_big()`` once more than ``max_size`` bytes came.

    A file may grow after its size was checked: the cap holds for what is read. Reads stop one byte
    past the cap, so refusing never reads far beyond it. The caller opens and closes ``fd``.
    """
    total = 0
    while True:
        chunk = os.read(fd, CHUNK if max_size is None else min(CHUNK, max_size + 1 - total))
        if not chunk:
            return
        total += len(chunk)
        if max_size is not None and total > max_size:
            raise too_big()
        yield chunk


def read_regular(path: str, max_size: int, *, what: str = "input", error: ErrorType = InputError,
                 option: str | None = None) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_size`` of them.

    A FIFO, device, socket or directory (also behind a symlink) is refused without reading; a file
    over ``max_size`` is refused, also one that grows while it is read. ``option`` names the setting
    that raises the cap, for the error's fix.
    """
    fd = open_regular(path, what, error)
    try:
        size = os.fstat(fd).st_size
        if size > max_size:
            raise _too_big(path, human_size(size), max_size, what, error, option)
        return b"".join(capped_chunks(fd, max_size, lambda: _too_big(
            path, f"more than {human_size(max_size)} read", max_size, what, error, option)))
    except OSError as exc:
        raise error(path, None, f"cannot read the file: {exc.strerror or exc}", "check the file") from None
    finally:
        os.close(fd)


def gunzip_bounded(path: str, data: bytes, max_size: int, *, what: str = "input", error: ErrorType = InputError,
                   option: str | None = None) -> bytes:
    """``data`` decompressed (every gzip member), refusing more than ``max_size`` bytes of output.

    Decompression runs chunk by chunk and stops one chunk past the cap, so a gzip bomb costs at most
    ``max_size`` of memory and the time to inflate it.
    """
    out: list[bytes] = []
    total = 0
    rest = data
    try:
        while rest:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            pending = rest
            while not inflater.eof:
                if not pending:
                    raise EOFError("compressed data ended before the end-of-stream marker")
                chunk = inflater.decompress(pending, min(CHUNK, max_size + 1 - total))
                pending = inflater.unconsumed_tail
                out.append(chunk)
                total += len(chunk)
                if total > max_size:
                    raise _too_big(path, f"more than {human_size(max_size)} once decompressed", max_size,
                                   f"decompressed {what}", error, option)
                if not chunk and not pending and not inflater.eof:
                    raise EOFError("compressed data ended before the end-of-stream marker")
            rest = inflater.unused_data
            if rest and not rest.startswith(b"\x1f\x8b"):
                if rest.strip(b"\0"):
                    raise OSError("trailing garbage after the compressed data")
                rest = b""
    except (OSError, EOFError, zlib.error) as exc:
        raise error(path, None, f"corrupt gzip data: {exc}", f"download the {what} again") from None
    return b"".join(out)


def read_input(path: str, max_size: int, *, what: str = "input", error: ErrorType = InputError,
               option: str | None = None) -> bytes:
    """:func:`read_regular`, then :func:`gunzip_bounded` when the file is gzip-compressed."""
    data = read_regular(path, max_size, what=what, error=error, option=option)
    if data[:2] == b"\x1f\x8b":
        return gunzip_bounded(path, data, max_size, what=what, error=error, option=option)
    return data


def sha256_file(path: str, max_size: int, *, what: str = "file", error: ErrorType = InputError) -> str:
    """Hex SHA-256 of the regular file ``path``, streamed in chunks; refused past ``max_size`` bytes."""
    fd = open_regular(path, what, error)
    digest = hashlib.sha256()
    try:
        for chunk in capped_chunks(fd, max_size, lambda: _too_big(
                path, f"more than {human_size(max_size)}", max_size, what, error, None)):
            digest.update(chunk)
    except OSError as exc:
        raise error(path, None, f"cannot read the file: {exc.strerror or exc}", "check the file") from None
    finally:
        os.close(fd)
    return digest.hexdigest()


def decode_utf8(path: str, data: bytes, *, what: str = "input", error: ErrorType = InputError) -> str:
    """UTF-8 text (a leading BOM dropped); a NUL byte or invalid UTF-8 is refused as binary data."""
    nul = data.find(b"\0")
    if nul >= 0:
        raise error(path, None, f"binary data (NUL byte at offset {nul})",
                    f"the {what} must be UTF-8 text; download it again")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(path, None, f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})",
                    f"the {what} must be UTF-8 text; download it again") from None


# --------------------------------------------------------------------------------------------------------------
# identifiers


def non_ascii(text: str) -> str | None:
    """A description of the first non-ASCII character of ``text`` (``"U+0663 ARABIC-INDIC DIGIT THREE"``), or None."""
    if text.isascii():
        return None
    char = next(c for c in text if not c.isascii())
    return f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed character')}"


# --------------------------------------------------------------------------------------------------------------
# JSON


class _Refused(ValueError):
    """A strict-JSON refusal raised from inside the decoder's hooks: (message, fix)."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _v in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _Refused(f"duplicate key {dup!r} in one JSON object",
                       "keep one value per key (JSON parsers disagree on which duplicate wins)")
    return obj


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number", "write a finite number, or null when the value is unknown")


def _number(text: str) -> None:
    digits = sum(c.isdigit() for c in text)
    if digits > MAX_NUMBER_DIGITS:
        raise _Refused(f"a number with {digits} digits (more than {MAX_NUMBER_DIGITS})",
                       "write numbers with their usual precision")


def _int(text: str) -> int:
    _number(text)
    return int(text)


def _float(text: str) -> float:
    _number(text)
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text} overflows a float", "write a finite number")
    return value


def _check_tree(doc: Any, max_depth: int) -> None:
    """Depth and lone-surrogate check, iteratively (the document may be deeper than the C stack allows)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = [*node.keys(), *node.values()]
        elif isinstance(node, list):
            children = node
        else:
            if isinstance(node, str) and not node.isascii():
                try:
                    node.encode("utf-8")
                except UnicodeEncodeError:
                    raise _Refused("a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff)",
                                   "write characters as UTF-8 or as valid surrogate pairs") from None
            continue
        if depth > max_depth:
            raise _Refused(f"JSON nested deeper than {max_depth} levels", "flatten the document")
        stack.extend((child, depth + 1) for child in children)


def load_json(path: str, text: str, *, what: str = "input", error: ErrorType = InputError,
              max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON: refuses duplicate keys, NaN/Infinity, over-long numbers, deep nesting, lone surrogates."""
    try:
        doc = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_int=_int,
                         parse_float=_float)
        _check_tree(doc, max_depth)
    except _Refused as exc:
        raise error(path, None, exc.message, exc.fix) from None
    except json.JSONDecodeError as exc:
        raise error(path, None, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                    f"fix the JSON syntax, or download the {what} again "
                    "(a truncated download ends mid-document)") from None
    except RecursionError:
        raise error(path, None, f"JSON nested deeper than {max_depth} levels", "flatten the document") from None
    except ValueError as exc:  # int/str conversion limits and the like
        raise error(path, None, f"not valid JSON: {exc}", f"fix the {what}") from None
    return doc


# --------------------------------------------------------------------------------------------------------------
# YAML


class _YamlRefused(Exception):
    """Raised from inside the strict loader: (message, fix, mark)."""

    def __init__(self, message: str, fix: str, mark: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.mark = mark


class StrictLoader(_SafeLoader):  # type: ignore[misc,valid-type]
    """``yaml.SafeLoader`` that refuses duplicate mapping keys and aliases (no billion laughs)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _YamlRefused(f"YAML alias *{event.anchor} (anchors and aliases are not allowed)",
                               "write the value out in full", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _value in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise _YamlRefused(f"duplicate key {key!r} (first at line {seen[key].line + 1})",
                                           "keep one value per key", key_node.start_mark)
                    seen[key] = key_node.start_mark
                except TypeError:
                    pass  # an unhashable key; construct_mapping names it
        return super().construct_mapping(node, deep=deep)


def _where(mark: Any) -> str | None:
    return f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else None


def load_yaml(path: str, text: str, *, what: str = "input", error: ErrorType = InputError) -> Any:
    """Strict single-document YAML (safe types only, no duplicate keys, no aliases)."""
    if not HAS_YAML:
        raise RuntimeError(
            f"the Python library 'PyYAML' is required to read the {what}; install it with 'pip install PyYAML'. "
            f"Import error: {YAML_IMPORT_ERROR}"
        )
    loader = StrictLoader(text)
    try:
        return loader.get_single_data()
    except _YamlRefused as exc:
        raise error(path, _where(exc.mark), exc.message, exc.fix) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(path, _where(mark), f"not valid YAML: {problem}",
                    "fix the YAML syntax (yamllint shows the exact spot)") from None
    except RecursionError:
        raise error(path, None, "YAML nested too deeply", "flatten the document") from None
    except (ValueError, OverflowError) as exc:  # 5,000-digit ints, impossible dates such as 2026-13-45
        raise error(path, None, f"a value YAML cannot convert: {str(exc).splitlines()[0]}",
                    "quote the value or correct it") from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- writing


def write_atomic(path: str, data: bytes, *, only_if_changed: bool = False, prefix: str = ".tmp-") -> bool:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader sees the old file or the new one, never half of either. With ``only_if_changed`` a file that
    already holds ``data`` is left alone. Returns whether the file was written.
    """
    path = os.path.abspath(path)
    if only_if_changed:
        try:
            with open(path, "rb") as fh:
                if fh.read() == data:
                    return False
        except OSError:
            pass
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def size_option(module: Any, name: str, example: str = "256M or 1G") -> int:
    """The module option ``name`` (``"256M"``, ``"1G"``, bytes) in bytes; fails the task (bad input) otherwise."""
    from ansible.module_utils.common.text.formatters import human_to_bytes

    text = module.params[name]
    try:
        size = human_to_bytes(text, isbits=False)
    except (ValueError, TypeError):
        size = -1
    if size <= 0:
        module.fail_json(msg=f"{name}: {text!r} is not a size; give bytes or a size like {example}", bad_input=True)
    return size


def write_dest(module: Any, result: dict[str, Any], dest: str, text: str, what: str, prefix: str) -> None:
    """Write a module's JSON result document ``text`` to ``dest`` (atomically, only if it changed; not in check
    mode) and record ``dest`` and ``changed`` in ``result``; fails the task (bad input) when it cannot."""
    result["dest"] = dest
    if module.check_mode:
        result["changed"] = True
        return
    try:
        result["changed"] = write_atomic(dest, text.encode("utf-8"), only_if_changed=True, prefix=prefix)
    except OSError as e:
        module.fail_json(msg=f"{dest}: cannot write the {what} ({e.strerror}); check the folder exists and is "
                         "writable", bad_input=True)
