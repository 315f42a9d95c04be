# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import gzip
import hashlib
import os
import socket
from pathlib import Path

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _safe_io
from ansible_collections.exchangeops.patching.plugins.module_utils._errors import InputError
from ansible_collections.exchangeops.patching.plugins.module_utils._safe_io import (
    gunzip_bounded,
    human_size,
    load_json,
    load_yaml,
    non_ascii,
    read_input,
    read_regular,
    sha256_file,
)


class OwnError(InputError):
    pass


def refused(call, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as err:
        call(*args, **kwargs)
    return err.value


# --------------------------------------------------------------------------- regular files only


def test_reads_a_regular_file_and_a_symlink_to_one(tmp_path):
    path = tmp_path / "feed.json"
    path.write_bytes(b'{"a": 1}')
    (tmp_path / "link.json").symlink_to(path)
    assert read_regular(str(path), 100) == b'{"a": 1}'
    assert read_regular(str(tmp_path / "link.json"), 100) == b'{"a": 1}'


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null"])
def test_a_device_is_refused_unread_also_behind_a_symlink(tmp_path, target):
    link = tmp_path / "feed.json"
    link.symlink_to(target)
    for path in (target, str(link)):
        err = refused(read_regular, path, 1024, what="feed", error=OwnError)
        assert isinstance(err, OwnError)
        assert err.path == path
        assert err.message == "is a character device, not a regular file"
        assert "regular feed file" in err.fix


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "feed.json"
    os.mkfifo(fifo)  # no writer: a blocking open would hang here forever
    err = refused(read_regular, str(fifo), 1024)
    assert err.message == "is a FIFO (named pipe), not a regular file"


def test_a_directory_and_a_socket_are_refused(tmp_path):
    err = refused(read_regular, str(tmp_path), 1024, what="feed")
    assert err.message == "is a directory, not a regular file"
    assert "not a directory" in err.fix
    sock_path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        err = refused(read_regular, str(sock_path), 1024)
    assert err.message == "is a socket, not a regular file"  # open() itself fails on a socket (ENXIO)


def test_missing_file(tmp_path):
    err = refused(read_regular, str(tmp_path / "nope"), 10, what="facts file")
    assert err.message == "file not found"
    assert "facts file" in err.fix


def test_size_cap_names_the_limit_and_the_option(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b"x" * 2049)
    assert read_regular(str(path), 2049) == b"x" * 2049
    err = refused(read_regular, str(path), 2048, what="feed", option="max_feed_size")
    assert err.message == "feed is larger than the limit of 2 KiB (2.0 KiB)"
    assert "raise max_feed_size" in err.fix


def test_human_size():
    assert human_size(256 * 1024 * 1024) == "256 MiB"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(10) == "10 bytes"


# --------------------------------------------------------------------------- gzip


def test_gzip_is_read_transparently_also_multi_member(tmp_path):
    path = tmp_path / "epss.csv.gz"
    path.write_bytes(gzip.compress(b"one,") + gzip.compress(b"two"))
    assert read_input(str(path), 1024) == b"one,two"


def test_gzip_bomb_stops_at_the_cap(tmp_path):
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024), compresslevel=9)  # 8 MiB from about 8 KiB
    path = tmp_path / "kev.json.gz"
    path.write_bytes(bomb)
    err = refused(read_input, str(path), 1024 * 1024, what="feed", option="max_feed_size")
    assert err.message == "decompressed feed is larger than the limit of 1 MiB (more than 1 MiB once decompressed)"
    assert "raise max_feed_size" in err.fix


@pytest.mark.parametrize("data", [
    gzip.compress(b'{"a": 1}', mtime=0)[:12],  # truncated
    gzip.compress(b'{"a": 1}', mtime=0) + b"junk",  # trailing garbage
    b"\x1f\x8b" + b"\xff" * 20,  # not deflate at all
])
def test_corrupt_gzip(data):
    err = refused(gunzip_bounded, "f.gz", data, 1024, what="feed")
    assert err.message.startswith("corrupt gzip data")
    assert err.fix == "download the feed again"


def test_sha256_is_streamed_and_capped(tmp_path):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(b"y" * (3 * _safe_io.CHUNK + 5))
    assert sha256_file(str(path), 4 * _safe_io.CHUNK) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "larger than the limit" in refused(sha256_file, str(path), _safe_io.CHUNK).message
    assert "not a regular file" in refused(sha256_file, "/dev/zero", 10).message


def test_binary_garbage_is_not_text():
    err = refused(_safe_io.decode_utf8, "f", b"\x00\x01\x02garbage", what="feed")
    assert err.message == "binary data (NUL byte at offset 0)"
    err = refused(_safe_io.decode_utf8, "f", b"ok\xff\xfe", what="feed")
    assert err.message == "not UTF-8 text (byte 0xff at offset 2)"
    assert _safe_io.decode_utf8("f", "\ufeffok".encode()) == "ok"


# --------------------------------------------------------------------------- strict JSON


@pytest.mark.parametrize(("text", "message"), [
    ("[" * 100_000 + "]" * 100_000, "JSON nested deeper than 64 levels"),
    ("[" * 65 + "]" * 65, "JSON nested deeper than 64 levels"),
    ('{"score": ' + "9" * 5000 + "}", "a number with 5000 digits (more than 64)"),
    ('{"score": 0.' + "1" * 5000 + "}", "a number with 5001 digits (more than 64)"),
    ('{"score": 1e999}', "the number 1e999 overflows a float"),
    ('{"score": NaN}', "NaN is not a JSON number"),
    ('[-Infinity]', "-Infinity is not a JSON number"),
    ('{"id": "CVE-2026-1", "id": "CVE-2026-2"}', "duplicate key 'id' in one JSON object"),
    ('{"a": {"b": 1, "c": 2, "b": 3}}', "duplicate key 'b' in one JSON object"),
    ('{"id": "\\ud800"}', "a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff)"),
    ('{"id": ', "not valid JSON: Expecting value at line 1 column 8"),
])
def test_strict_json_refusals(text, message):
    err = refused(load_json, "feeds/x.json", text, what="feed", error=OwnError)
    assert isinstance(err, OwnError)
    assert err.path == "feeds/x.json"
    assert err.message == message
    assert err.fix


def test_strict_json_reads_ordinary_documents():
    assert load_json("f", '{"a": [1, 2.5, -3e2, null, true, "\\u00e9"], "b": {"c": "d"}}') == {
        "a": [1, 2.5, -300.0, None, True, "é"], "b": {"c": "d"}}
    assert load_json("f", "[" * 64 + "]" * 64) is not None


# --------------------------------------------------------------------------- strict YAML


def test_yaml_duplicate_key_is_refused_with_both_lines():
    err = refused(load_yaml, "patches/x.yml", "id: a\nversion: '1'\nid: b\n", error=OwnError)
    assert isinstance(err, OwnError)
    assert err.record == "line 3 column 1"
    assert err.message == "duplicate key 'id' (first at line 1)"


def test_yaml_nested_duplicate_key():
    err = refused(load_yaml, "p.yml", "artifact:\n  url: a\n  url: b\n")
    assert err.message == "duplicate key 'url' (first at line 2)"


def test_yaml_alias_bomb_is_refused_at_the_first_alias():
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    err = refused(load_yaml, "p.yml", "\n".join(lines) + "\n")
    assert err.message == "YAML alias *a0 (anchors and aliases are not allowed)"
    assert err.record == "line 2 column 10"


@pytest.mark.parametrize(("text", "message"), [
    ("files: " + "1" * 5000 + "\n", "a value YAML cannot convert"),
    ("released_at: 2026-13-45\n", "a value YAML cannot convert: month must be in 1..12"),
    ("a: !!python/object/apply:os.system ['id']\n", "not valid YAML: could not determine a constructor"),
    ("a: 1\n---\nb: 2\n", "not valid YAML: but found another document"),
    ("a: [\n", "not valid YAML"),
    ("[" * 1000 + "]" * 1000, "YAML nested too deeply"),
])
def test_yaml_refusals(text, message):
    err = refused(load_yaml, "p.yml", text)
    assert err.message.startswith(message)


def test_yaml_reads_ordinary_documents():
    assert load_yaml("p.yml", "id: a\nfixes: [CVE-2026-31337]\nchange_size: {files: 1, lines: 2}\n") == {
        "id": "a", "fixes": ["CVE-2026-31337"], "change_size": {"files": 1, "lines": 2}}


def test_missing_yaml_library(monkeypatch):
    monkeypatch.setattr(_safe_io, "HAS_YAML", False)
    with pytest.raises(RuntimeError, match="'PyYAML' is required to read the patch catalog"):
        load_yaml("p.yml", "a: 1", what="patch catalog")


# --------------------------------------------------------------------------- identifiers


def test_non_ascii_names_the_character():
    assert non_ascii("CVE-2026-31337") is None
    assert non_ascii("CVE-2026-\u0663\u0661\u0663\u0663\u0667") == "U+0663 ARABIC-INDIC DIGIT THREE"
    assert non_ascii("1.\uff14.3") == "U+FF14 FULLWIDTH DIGIT FOUR"


def test_errors_are_one_line(tmp_path: Path):
    err = refused(load_json, str(tmp_path / "f.json"), '{"a":\n\n[1,\n')
    assert "\n" not in str(err)
