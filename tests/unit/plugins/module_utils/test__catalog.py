# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _safe_io
from ansible_collections.exchangeops.patching.plugins.module_utils._catalog import (
    COMPONENTS,
    CatalogError,
    Patch,
    load_catalog,
    load_patch,
    version_key,
)

REPO = Path(__file__).resolve().parents[4]
PATCHES = REPO / "patches"

SHA = "b29f1613daf7698c087996e0bfdaf222c9af197c01b115408a4df48df3c2b701"
GOOD = f"""---
id: matching-engine-1.4.3
component: matching-engine
version: "1.4.3"
artifact:
  url: "file://.testbed/releases/matching-engine-1.4.3.tar.gz"
  sha256: "{SHA}"
  signature: "x/ZPSl2MKHMOdx3aKQUIdMMPvJFUMEtmQ0IxM9gzcJ7CcMxgd3liIRDlxzlVsxlhxLe3nqMVxQq4v45Gk5acTQ=="
fixes:
  - CVE-2026-31337
restart: service
migration: none
change_size:
  files: 2
  lines: 14
released_at: "2026-11-19T14:00:00Z"
"""


def entry(tmp_path: Path, text: str = GOOD, name: str = "patch.yml", **replace: str) -> str:
    for old, new in replace.items():
        old_line = next(line for line in text.splitlines()
                        if line.strip() == old or line.lstrip().startswith(f"{old}:"))
        text = text.replace(old_line + "\n", new + "\n" if new else "")
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_sample_catalog_loads_sorted_by_id():
    patches = load_catalog(str(PATCHES))
    assert [p.id for p in patches] == ["matching-engine-1.4.3", "matching-engine-1.5.0", "wallet-signer-2.3.1"]
    by_id = {p.id: p for p in patches}
    assert by_id["matching-engine-1.4.3"].fixes == ("CVE-2026-31337",)
    assert by_id["wallet-signer-2.3.1"].fixes == ("CVE-2026-40211",)
    assert by_id["matching-engine-1.5.0"].migration == "forward_compatible"
    assert all(p.component in COMPONENTS and p.released_at.endswith("Z") for p in patches)
    assert all(p.source.startswith(str(PATCHES)) for p in patches)


def test_good_entry_fields(tmp_path):
    patch = load_patch(entry(tmp_path))
    assert patch == Patch(
        "matching-engine-1.4.3", "matching-engine", "1.4.3", "file://.testbed/releases/matching-engine-1.4.3.tar.gz",
        SHA, "x/ZPSl2MKHMOdx3aKQUIdMMPvJFUMEtmQ0IxM9gzcJ7CcMxgd3liIRDlxzlVsxlhxLe3nqMVxQq4v45Gk5acTQ==",
        ("CVE-2026-31337",), "service", "none", 2, 14, "2026-11-19T14:00:00Z", str(tmp_path / "patch.yml"),
    )
    with pytest.raises(AttributeError):
        patch.id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("released_at: 2026-11-19T14:00:00Z", "2026-11-19T14:00:00Z"),  # YAML datetime object
        ("released_at: 2026-11-19", "2026-11-19T00:00:00Z"),  # YAML date object
        ("released_at: 2026-11-19 16:00:00+02:00", "2026-11-19T14:00:00Z"),
        ('released_at: "2026-11-19T16:00:00+02:00"', "2026-11-19T14:00:00Z"),
        ('released_at: "2026-11-19T14:00:00"', "2026-11-19T14:00:00Z"),  # naive counts as UTC
    ],
)
def test_released_at_forms(tmp_path, line, expected):
    assert load_patch(entry(tmp_path, released_at=line)).released_at == expected


def test_empty_fixes_upper_case_sha_and_suffix_version(tmp_path):
    text = GOOD.replace("fixes:\n  - CVE-2026-31337\n", "fixes: []\n").replace(SHA, SHA.upper())
    patch = load_patch(entry(tmp_path, text, version='version: "1.4.3-rc1"'))
    assert patch.fixes == () and patch.sha256 == SHA and patch.version == "1.4.3-rc1"


def test_entry_written_by_the_testbed_release_builder_loads(tmp_path):
    release = pytest.importorskip("testbed.release")
    built = release.build_release(tmp_path / "out", tmp_path / "keys", tmp_path / "catalog", "wallet-signer", "2.3.1",
                                  fixes=["CVE-2026-40211"])
    patch = load_patch(built.catalog_entry)
    assert (patch.id, patch.sha256, patch.signature, patch.fixes) == (
        "wallet-signer-2.3.1", built.sha256, built.signature, ("CVE-2026-40211",))
    assert patch.artifact_url.startswith("file:///")
    assert load_catalog(str(tmp_path / "catalog")) == [patch]


def test_version_key():
    assert version_key("1.4.10") > version_key("1.4.9")
    assert version_key("2.0") < version_key("2.0.1") < version_key("10.0.0")
    assert version_key("1.4.3-rc1") == (1, 4, 3)
    assert sorted(["1.5.0", "1.4.10", "1.4.9"], key=version_key) == ["1.4.9", "1.4.10", "1.5.0"]
    with pytest.raises(ValueError, match="'latest' is not a dotted version"):
        version_key("latest")


def test_catalog_error_shape_and_pickle():
    err = CatalogError("p.yml", "artifact.sha256", "bad", "fix it")
    assert str(err) == "p.yml: artifact.sha256: bad; fix it"
    assert str(CatalogError("p.yml", None, "bad", "fix it")) == "p.yml: bad; fix it"
    assert isinstance(err, ValueError)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


BAD = [
    # (case id, {key: replacement line} or full text, record, message part, fix part)
    ("missing-field", {"migration": ""}, "migration", "required field is missing", "e.g. migration: none"),
    ("missing-artifact-field", {"sha256": ""}, "artifact.sha256", "required field is missing",
     "e.g. sha256: \"9f2c"),
    ("unknown-component", {"component": "component: order-gateway"}, "component",
     "unknown value str 'order-gateway'", "use one of: matching-engine, wallet-signer"),
    ("bad-sha256", {"sha256": '  sha256: "abc123"'}, "artifact.sha256", "'abc123' is not 64 hexadecimal characters",
     "sha256sum"),
    ("sha256-not-hex", {"sha256": '  sha256: "' + "z" * 64 + '"'}, "artifact.sha256", "is not 64 hexadecimal",
     "sha256sum"),
    ("bad-signature", {"signature": '  signature: "not base64!!"'}, "artifact.signature", "is not base64",
     "base64-encoded"),
    ("fixes-not-a-list", {"fixes": "fixes: CVE-2026-31337", "- CVE-2026-31337": ""}, "fixes",
     "must be a list of CVE IDs, not str 'CVE-2026-31337'", "fixes: [CVE-2026-31337]"),
    ("fixes-null", {"- CVE-2026-31337": ""}, "fixes", "must be a list of CVE IDs, not null", "or [] when"),
    ("bad-cve-in-fixes", {"- CVE-2026-31337": "  - CVE-26-1"}, "fixes[0]", "str 'CVE-26-1' is not a CVE ID",
     "CVE-YYYY-NNNN"),
    ("duplicate-cve", {"- CVE-2026-31337": "  - CVE-2026-31337\n  - CVE-2026-31337"}, "fixes[1]",
     "CVE-2026-31337 is listed twice", "list each CVE once"),
    ("typo-key", {"fixes": "fixs:"}, "fixs", "unknown key 'fixs'", "did you mean 'fixes'?"),
    ("typo-nested-key", {"lines": "  line: 14"}, "change_size.line", "unknown key 'line'", "did you mean 'lines'?"),
    ("version-as-float", {"version": "version: 1.5"}, "version", "must be a string, not float 1.5",
     "quote the value"),
    ("version-not-dotted", {"version": "version: latest"}, "version", "'latest' is not a dotted version",
     'version: "1.4.3"'),
    ("restart-boolean", {"restart": "restart: no"}, "restart", "unknown value boolean false",
     "use one of: none, service, system"),
    ("migration-unknown", {"migration": "migration: maybe"}, "migration", "unknown value str 'maybe'",
     "none, forward_compatible, irreversible"),
    ("files-as-string", {"files": '  files: "2"'}, "change_size.files", "must be a whole number >= 0, not str '2'",
     "files: 3"),
    ("lines-negative", {"lines": "  lines: -4"}, "change_size.lines", "not int -4", "lines: 42"),
    ("lines-boolean", {"lines": "  lines: true"}, "change_size.lines", "not boolean true", "lines: 42"),
    ("id-with-slash", {"id": "id: ../evil"}, "id", "has characters other than letters", "matching-engine-1.4.3"),
    ("released-at-bad", {"released_at": "released_at: next week"}, "released_at",
     "str 'next week' is not an ISO 8601 date", "2026-11-20T09:00:00Z"),
    ("artifact-not-mapping", {"artifact": "artifact: file://x.tar.gz", "url": "", "sha256": "", "signature": ""},
     "artifact", "must be a mapping, not str", "url:"),
    ("url-empty", {"url": '  url: ""'}, "artifact.url", "is empty", "url:"),
    ("not-a-mapping", "---\n- id: x\n", None, "must be a YAML mapping, not list", "one patch per file"),
    ("empty-file", "---\n", None, "file is empty", "YAML mapping"),
    ("invalid-yaml", "---\nid: [unclosed\n", "line 3 column 1", "not valid YAML", "yamllint"),
]


@pytest.mark.parametrize(("change", "record", "message", "fix"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_entry_is_one_clear_error(tmp_path, change, record, message, fix):
    path = entry(tmp_path, change) if isinstance(change, str) else entry(tmp_path, **change)
    with pytest.raises(CatalogError) as err:
        load_patch(path)
    e = err.value
    assert e.path == path
    assert e.record == record
    assert message in e.message
    assert fix in e.fix
    assert str(e).startswith(f"{path}: {record}: " if record else f"{path}: ")


def test_missing_field_names_it_with_an_example(tmp_path):
    with pytest.raises(CatalogError) as err:
        load_patch(entry(tmp_path, change_size="", files="", lines=""))
    assert str(err.value) == (f"{tmp_path / 'patch.yml'}: change_size: required field is missing; "
                              "add it, e.g. change_size: {files: 3, lines: 42}")


def test_file_not_found(tmp_path):
    with pytest.raises(CatalogError, match="file not found"):
        load_patch(str(tmp_path / "nope.yml"))


def test_catalog_directory_errors(tmp_path):
    with pytest.raises(CatalogError, match="directory not found") as err:
        load_catalog(str(tmp_path / "missing"))
    assert err.value.path == str(tmp_path / "missing")
    with pytest.raises(CatalogError, match=r"no patch files \(\*\.yml, \*\.yaml\)"):
        load_catalog(str(tmp_path))
    (tmp_path / "README.md").write_text("not a patch")
    (tmp_path / ".hidden.yml").write_text("broken: [")
    with pytest.raises(CatalogError, match="no patch files"):
        load_catalog(str(tmp_path))
    with pytest.raises(CatalogError, match="is not a directory"):
        load_catalog(str(tmp_path / "README.md"))


def test_duplicate_ids_name_both_files(tmp_path):
    first = entry(tmp_path, name="a.yml")
    second = entry(tmp_path, name="b.yaml")
    with pytest.raises(CatalogError) as err:
        load_catalog(str(tmp_path))
    assert err.value.path == second and err.value.record == "id"
    assert first in err.value.message and "duplicate id 'matching-engine-1.4.3'" in err.value.message
    assert "unique id" in err.value.fix


def test_one_bad_file_fails_the_catalog(tmp_path):
    entry(tmp_path, name="a.yml")
    bad = entry(tmp_path, name="b.yml", id="id: other", component="component: order-gateway")
    with pytest.raises(CatalogError) as err:
        load_catalog(str(tmp_path))
    assert err.value.path == bad and err.value.record == "component"


def test_missing_yaml_library_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(_safe_io, "HAS_YAML", False)
    with pytest.raises(RuntimeError, match="'PyYAML' is required"):
        load_patch(entry(tmp_path))


# --------------------------------------------------------------------------- hostile entries


@pytest.mark.parametrize(("old", "new", "record", "message"), [
    ("id: matching-engine-1.4.3", "id: matching-engine-1.\u0664.3", "id", "non-ASCII character (U+0664"),
    ('version: "1.4.3"', 'version: "1.\u0664.3"', "version", "non-ASCII character (U+0664"),
    ("  - CVE-2026-31337", "  - CVE-2026-\u0663\u0661\u0663\u0663\u0667", "fixes[0]", "non-ASCII character (U+0663"),
    ("id: matching-engine-1.4.3", "id: matching-engine-1.4.3\nid: evil", "line 3 column 1", "duplicate key 'id'"),
])
def test_hostile_entry_fields(tmp_path, old, new, record, message):
    path = tmp_path / "patch.yml"
    path.write_text(GOOD.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(CatalogError) as err:
        load_patch(str(path))
    assert err.value.record == record
    assert message in err.value.message


def test_non_ascii_version_key_is_refused():
    with pytest.raises(ValueError, match="non-ASCII"):
        version_key("1.\u0664.3")


def test_special_file_in_the_catalog_is_refused_not_skipped(tmp_path):
    entry(tmp_path)
    (tmp_path / "zero.yml").symlink_to("/dev/zero")
    with pytest.raises(CatalogError) as err:
        load_catalog(str(tmp_path))
    assert err.value.path == str(tmp_path / "zero.yml")
    assert err.value.message == "is a character device, not a regular file"


# --------------------------------------------------------------------------- the release's SBOM (optional)


def test_an_entry_may_name_its_release_sbom(tmp_path):
    plain = load_patch(entry(tmp_path))
    assert (plain.sbom_url, plain.sbom_sha256) == (None, None)
    text = GOOD + ('sbom:\n  url: "file://.testbed/releases/matching-engine-1.4.3.cdx.json"\n'
                   f'  sha256: "{SHA.upper()}"\n')
    patch = load_patch(entry(tmp_path, text, name="with-sbom.yml"))
    assert patch.sbom_url == "file://.testbed/releases/matching-engine-1.4.3.cdx.json"
    assert patch.sbom_sha256 == SHA


def test_entry_written_by_the_release_builder_names_its_sbom(tmp_path):
    release = pytest.importorskip("testbed.release")
    built = release.build_release(tmp_path / "out", tmp_path / "keys", tmp_path / "catalog", "matching-engine",
                                  "1.4.3")
    patch = load_patch(built.catalog_entry)
    sbom = tmp_path / "out" / "matching-engine-1.4.3.cdx.json"
    assert patch.sbom_url == sbom.resolve().as_uri()
    assert patch.sbom_sha256 == hashlib.sha256(sbom.read_bytes()).hexdigest()


@pytest.mark.parametrize(("sbom", "record", "message"), [
    ('sbom: "file://x.cdx.json"\n', "sbom", "must be a mapping"),
    ('sbom:\n  url: "file://x.cdx.json"\n', "sbom.sha256", "required field is missing"),
    (f'sbom:\n  url: "file://x.cdx.json"\n  sha256: "{SHA[:10]}"\n', "sbom.sha256", "is not 64 hexadecimal"),
    (f'sbom:\n  url: "file://x y.cdx.json"\n  sha256: "{SHA}"\n', "sbom.url", "contains whitespace"),
    (f'sbom:\n  url: "file://x.cdx.json"\n  sha256: "{SHA}"\n  sig: "x"\n', "sbom.sig", "unknown key 'sig'"),
])
def test_a_bad_sbom_field_is_one_clear_error(tmp_path, sbom, record, message):
    with pytest.raises(CatalogError) as err:
        load_patch(entry(tmp_path, GOOD + sbom))
    assert err.value.record == record and message in err.value.message
