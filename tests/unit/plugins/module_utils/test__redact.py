# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Redaction rules (plugins/module_utils/_redact.py). Every test here fails on the redaction
that lived in _audit.py before: six-character minimum, eight key words, no URL or syntax rules,
no encodings."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils._redact import (
    REDACTED,
    Redactor,
    is_secret_key,
    redact,
    redact_syntax,
)

# --- 1. credentials inside URLs -------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("https://user:s3cr3t@host/x", f"https://user:{REDACTED}@host/x"),
    ("postgresql://app:pw@db.internal:5432/ledger", f"postgresql://app:{REDACTED}@db.internal:5432/ledger"),
    ("mysql+pymysql://root:p%40ss@127.0.0.1/db?charset=utf8", f"mysql+pymysql://root:{REDACTED}@127.0.0.1/db?charset=utf8"),
    ("clone from https://ghp_abcdefghijklmnop@github.com/o/r.git failed",
     f"clone from https://{REDACTED}@github.com/o/r.git failed"),
    ("fetch http://a:b@h1/ then http://c:d@h2/", f"fetch http://a:{REDACTED}@h1/ then http://c:{REDACTED}@h2/"),
    ("amqp://guest:guest@mq:5672/", f"amqp://guest:{REDACTED}@mq:5672/"),
    # a login name is not a secret; no userinfo, nothing to cut
    ("ssh://git@github.com/o/r.git", "ssh://git@github.com/o/r.git"),
    ("https://host:8443/v1/status", "https://host:8443/v1/status"),
    ("mail ops@example.com", "mail ops@example.com"),
])
def test_url_credentials_are_cut_anywhere_in_text(text, expected):
    assert Redactor().redact_text(text) == expected
    assert Redactor().redact({"m": [text]}) == {"m": [expected]}


def test_a_url_password_is_learned_and_cut_where_it_shows_up_alone():
    r = Redactor()
    r.learn_from({"ledger_url": "postgresql://app:Pa55%2Fw0rd@db/ledger"})  # key not secret-named
    out = r.redact_text("connecting as app with Pa55/w0rd and Pa55%2Fw0rd")
    assert "Pa55" not in out
    basic = base64.b64encode(b"app:Pa55/w0rd").decode()
    assert r.redact_text(f"Authorization header was {basic}") == f"Authorization header was {REDACTED}"


# --- 2. secret-named keys -------------------------------------------------------------------

@pytest.mark.parametrize("key", ["db_credential", "credentials", "ssh_passphrase", "auth_token", "Authorization",
                                 "x-auth-key", "oauth_client", "ssh_private_key", "private-key", "db_dsn", "DSN",
                                 "ansible_become_pass", "ansible_ssh_pass", "admin_pwd"])
def test_new_secret_key_names_are_redacted(key):
    assert is_secret_key(key)
    assert Redactor().redact({key: "x", "nested": [{key: {"a": 1}}]}) == {key: REDACTED, "nested": [{key: REDACTED}]}


@pytest.mark.parametrize("key", ["author", "authority", "unauthorized_count", "passed", "compass", "pubkey",
                                 "exchange_release_pubkey", "operator", "approver", "reason"])
def test_ordinary_keys_are_kept(key):
    assert not is_secret_key(key)
    assert Redactor().redact({key: "kept"}) == {key: "kept"}


# --- 3. learned secrets of any length, and their encodings ----------------------------------

def test_a_five_character_token_is_learned_and_cut_as_a_word():
    r = Redactor()
    r.learn_from({"api_token": "k9Xq2"})
    assert r.redact_text("calling with k9Xq2 failed") == f"calling with {REDACTED} failed"
    assert r.redact_text("GET /v1?t=k9Xq2&x=1") == f"GET /v1?t={REDACTED}&x=1"
    assert r.redact_text("k9Xq2") == REDACTED
    # inside a longer word it is not the token: cutting it there would shred records
    assert r.redact_text("ak9Xq2b") == "ak9Xq2b"


def test_a_very_short_secret_is_cut_only_as_a_whole_value():
    r = Redactor()
    r.learn_from({"pin_secret": "42"})
    assert r.redact({"a": "42", "b": " 42 ", "msg": "took 42 s", "n": 42}) == {
        "a": REDACTED, "b": REDACTED, "msg": "took 42 s", "n": 42}
    # where it stands after a secret-named key it is cut whatever its length
    assert r.redact_text("retrying with pin_secret=42") == f"retrying with pin_secret={REDACTED}"


@pytest.mark.parametrize("encode", [
    lambda s: quote(s, safe=""), quote, quote_plus, lambda s: json.dumps(s)[1:-1],
    lambda s: base64.b64encode(s.encode()).decode(),
], ids=["quote-nosafe", "quote", "quote_plus", "json", "base64"])
@pytest.mark.parametrize("secret", ["p@ss w/rd\"1", "a+b/c"])
def test_learned_secrets_are_cut_in_their_encodings(secret, encode):
    r = Redactor()
    r.learn_from({"db_password": secret})
    form = encode(secret)
    out = r.redact_text(f"sent {form} to the server")
    assert form not in out and out == f"sent {REDACTED} to the server"


def test_flags_under_secret_named_keys_are_not_learned():
    r = Redactor()
    r.learn_from({"vault_enabled": "true", "use_auth": "no", "tls_auth": "yes"})
    assert r.secrets == set()
    assert r.redact_text("true or no, yes") == "true or no, yes"
    assert r.redact({"vault_enabled": "true"}) == {"vault_enabled": REDACTED}


# --- secrets by their syntax in free text (error messages) ----------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("login failed: password=hunter2 user=bob", f"login failed: password={REDACTED} user=bob"),
    ("psql 'host=db user=app password=pw1 dbname=x'", f"psql 'host=db user=app password={REDACTED} dbname=x'"),
    ('stdout {"api_key": "abc", "n": 1}', f'stdout {{"api_key": "{REDACTED}", "n": 1}}'),
    ("args {'auth_token': 'xyz', 'x': 1}", f"args {{'auth_token': '{REDACTED}', 'x': 1}}"),
    ("Authorization: Bearer abc.def", f"Authorization: {REDACTED}"),
    ("curl -H 'X-Auth-Token: t0k'", f"curl -H 'X-Auth-Token: {REDACTED}'"),
    ("sent Bearer eyJhbGciOi", f"sent Bearer {REDACTED}"),
    ("sent Basic " + base64.b64encode(b"u:p").decode(), f"sent Basic {REDACTED}"),
    ("run --vault-password=abc --check", f"run --vault-password={REDACTED} --check"),
    ("ssh_passphrase: open sesame", f"ssh_passphrase: {REDACTED} sesame"),
    # prose and flags stay readable
    ("Authentication: failed for bob", "Authentication: failed for bob"),
    ("401 Unauthorized: check the token", "401 Unauthorized: check the token"),
    ("a Bearer token is required", "a Bearer token is required"),
    ("Basic checks passed", "Basic checks passed"),
    ("allow_vault_password_script=True", "allow_vault_password_script=True"),
])
def test_syntactic_secrets_are_cut_without_knowing_them(text, expected):
    assert redact_syntax(text) == expected


def test_redaction_is_idempotent():
    r = Redactor()
    r.learn_from({"token": "abcdef123", "pin_secret": "42"})
    record = {"msg": "Authorization: Bearer abcdef123 at https://u:p@h/ password=x 42",
              "res": {"url": "postgresql://a:b@c/d", "a": "42"}}
    once = r.redact(record)
    assert r.redact(once) == once == redact(once)


def test_one_shot_redact_takes_known_secrets():
    assert redact({"msg": "key abcdef1 at https://u:p@h/"}, ["abcdef1"]) == {
        "msg": f"key {REDACTED} at https://u:{REDACTED}@h/"}
