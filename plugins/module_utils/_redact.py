# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Redaction of secrets in anything the collection records: audit events, the audit trail, the
HTML report and the error messages they carry.

Three layers, applied by :meth:`Redactor.redact` to every key and value of a record:

1. **Secret-named keys.** A key whose name matches :data:`SECRET_KEY` (token, password, passwd,
   passphrase, secret, credential, vault, private_key, api_key, dsn, auth* such as authorization
   and auth_token but not author, authority or unauthorized, and ``pass`` / ``pwd`` as a whole
   word such as ``ansible_become_pass``) has its value replaced by :data:`REDACTED`, whatever
   the value is.
2. **Secrets by their syntax, in any text, with no prior knowledge** (stateless, so a report of an
   old trail is cleaned too): the password of a URL (``https://user:pass@host``,
   ``postgresql://u:p@h/db``; a URL whose userinfo is one token, ``https://TOKEN@host``, loses it
   whole except for login schemes such as ``ssh://git@host``), ``Bearer <token>``,
   ``Basic <base64 of user:pass>``, and the value in ``key=value``, ``key: value``,
   ``"key": "value"`` and ``'key': 'value'`` when the key is secret-named (``Authentication: failed``
   is prose and kept).
3. **Learned secret values.** :meth:`Redactor.learn_from` collects the values under secret-named
   keys (extra vars, host vars, vault secrets, task results) and, from any string, URL passwords
   (raw and percent-decoded), URL tokens, Bearer tokens and Basic credentials
   (:func:`embedded_secrets`; a URL's ``user:password`` pair only in its encodings, so the user
   name stays readable), so a secret that later shows up on its own in a message is still caught.
   Each learned secret is also matched in its obvious encodings: percent-encoded (``quote`` with and without ``/`` safe,
   ``quote_plus``), JSON-escaped, HTML-escaped and base64 (which covers a ``Basic`` header built
   from a learned ``user:password``).

How long a learned secret must be to be replaced where it appears (the decision, also in
docs/audit.md): replacing every occurrence of a one- or two-character secret inside all text would
shred every record, and not replacing it leaks it. So

- :data:`MIN_SECRET_LEN` (6) characters or more: replaced wherever it occurs, inside any text;
- :data:`BOUNDED_SECRET_LEN` (4) or 5 characters: replaced where it stands as a token of its own,
  that is not preceded or followed by a letter or digit (``token abcde failed`` and
  ``?t=abcde&x`` are cut, ``xabcdex`` is not);
- 1 to 3 characters: replaced only where a whole value equals it.

Shorter secrets are still cut by layers 1 and 2 wherever they sit in a recognisable place (under
a secret-named key, in a URL, after ``Bearer`` or ``password=``). Values that are not secrets
though they sit under a secret-named key (``true``, ``false``, ``yes``, ``no``, ``on``, ``off``,
``none``, ``null``: e.g. ``vault_enabled: true``) are never learned. Replacement is one pass,
longest match first, never inside a ``<redacted>`` marker already there, so a secret containing
another is replaced whole and a secret such as ``redact`` cannot cut into the marker.

Pure standard library; no state beyond the learned secrets of one :class:`Redactor`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

REDACTED = "<redacted>"
# Learned secrets at least this long are replaced inside any text.
MIN_SECRET_LEN = 6
# Learned secrets of this length up to MIN_SECRET_LEN - 1 are replaced as whole tokens; shorter
# ones only as whole values.
BOUNDED_SECRET_LEN = 4
MAX_DEPTH = 40
SECRET_KEY = re.compile(
    r"token|passw(?:or)?d|passphrase|secret|credential|vault|private[_-]?key|api[_-]?key|dsn|(?<!un)auth(?!or(?!i[sz]))"
    r"|(?:^|[_.-])(?:pass|pwd)(?:$|[_.-])",
    re.IGNORECASE,
)
# Values under a secret-named key that are flags, not secrets.
NOT_SECRETS = frozenset({"true", "false", "yes", "no", "on", "off", "none", "null", "~"})
# Schemes whose lone userinfo is a login name (ssh://git@host), not a token.
LOGIN_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git", "sftp", "scp", "rsync", "telnet"})

_WORD = "A-Za-z0-9"
# Every pattern that starts with a run of characters is anchored at the start of that run (a
# lookbehind), so a long blob of letters costs linear time, not quadratic.
_URL_USERINFO = re.compile(
    r"(?<![A-Za-z0-9+.-])(?P<scheme>(?P<name>[A-Za-z][A-Za-z0-9+.-]*)://)"
    r"(?P<user>[^\s:/?#@'\"<>]*)(?::(?P<pw>[^\s/?#'\"<>]*))?@"
)
_BEARER = re.compile(r"\b(?P<word>[Bb]earer)(?P<sep>\s+)(?P<val>[^\s\"',;<>]+)")
_BASIC = re.compile(r"\b(?P<word>[Bb]asic)(?P<sep>\s+)(?P<val>[A-Za-z0-9+/]{2,}={0,2})(?![A-Za-z0-9+/=])")
# "a Bearer token is required": words, not credentials
_NOT_TOKENS = frozenset({"token", "tokens", "auth", "authentication", "authorization", "header", "credential",
                         "credentials", "scheme"})
# "Authentication: failed for bob" is prose, not a credential
_PROSE_KEYS = frozenset({"auth", "authentication", "authenticated", "authenticate", "authenticating"})
_SCHEME_PREFIX = re.compile(r"^(?:[Bb]earer|[Bb]asic|[Tt]oken|[Dd]igest)\s+")
_SCHEMES = r"(?:(?:[Bb]earer|[Bb]asic|[Tt]oken|[Dd]igest)\s+)?"
_KEY_EQ = re.compile(
    r"(?<![A-Za-z0-9_.-])-*(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)(?P<sep>[ \t]*=[ \t]*)"
    r"(?P<val>\"[^\"\n]*\"|'[^'\n]*'|" + _SCHEMES + r"[^\s&;,'\"<>=)\]}][^\s&;,'\"<>)\]}]*)"
)
_KEY_COLON = re.compile(
    r"(?<![A-Za-z0-9_.-])-*(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)(?P<sep>:[ \t]+)"
    r"(?P<val>" + _SCHEMES + r"[^\s'\"<>,;{}\[\]]+)"
)
_KEY_QUOTED = re.compile(
    r"(?P<q>[\"'])(?P<key>[^\"'\\\n]{1,100})(?P=q)(?P<sep>\s*:\s*)"
    r"(?P<val>\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*')"
)


def is_secret_key(name: Any) -> bool:
    """Whether a key's name says its value is a secret (see :data:`SECRET_KEY`)."""
    return isinstance(name, str) and SECRET_KEY.search(name) is not None


def _plain(value: Any) -> Any:
    """JSON-native form of a value. Objects that are not plain data are never str()-ed blindly:
    a vault-encrypted value (Ansible's EncryptedString, AnsibleVaultEncryptedUnicode) would
    decrypt itself, so anything whose type name says vault or encrypted is redacted outright."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        return value
    name = type(value).__name__.lower()
    if "vault" in name or "encrypted" in name:
        return REDACTED
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - e.g. an undefined template marker; its text is not needed
        return f"<{type(value).__name__}>"


def _is_flag(value: str) -> bool:
    return value.strip().strip("\"'").lower() in NOT_SECRETS


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _basic_pair(b64: str) -> str | None:
    """The ``user:password`` a Basic credential carries, or None when it is not one."""
    try:
        text = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return text if ":" in text and text.isprintable() else None


def encodings(secret: str) -> set[str]:
    """The secret and the encodings in which it commonly shows up in logs and messages."""
    raw = secret.encode("utf-8")
    b64 = base64.b64encode(raw).decode("ascii")
    forms = {
        secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
        json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], html.escape(secret, quote=True),
        b64, b64.rstrip("="), base64.urlsafe_b64encode(raw).decode("ascii").rstrip("="),
    }
    # base64 of a secret only of padding characters is no evidence of anything
    return {f for f in forms if f and f != REDACTED}


def _scrub_url(match: re.Match[str]) -> str:
    user, pw = match.group("user"), match.group("pw")
    if pw is not None:
        return f"{match.group('scheme')}{user}:{REDACTED}@" if pw else match.group(0)
    if user and match.group("name").lower() not in LOGIN_SCHEMES:
        return f"{match.group('scheme')}{REDACTED}@"
    return match.group(0)


def _scrub_bearer(match: re.Match[str]) -> str:
    if match.group("val").lower() in _NOT_TOKENS:
        return match.group(0)
    return f"{match.group('word')}{match.group('sep')}{REDACTED}"


def _scrub_basic(match: re.Match[str]) -> str:
    if _basic_pair(match.group("val")) is None:
        return match.group(0)
    return f"{match.group('word')}{match.group('sep')}{REDACTED}"


def _scrub_keyed(match: re.Match[str]) -> str:
    value = match.group("val")
    bare = _SCHEME_PREFIX.sub("", _unquoted(value))
    key = match.group("key")
    if (not is_secret_key(key) or key.lower() in _PROSE_KEYS or _is_flag(bare) or bare in ("", REDACTED)):
        return match.group(0)
    quote_char = value[0] if value[0] in "\"'" and value[-1] == value[0] and len(value) >= 2 else ""
    start = match.start("val") - match.start(0)
    return match.group(0)[:start] + f"{quote_char}{REDACTED}{quote_char}"


def redact_syntax(text: str) -> str:
    """Layer 2 alone: secrets recognisable by where they sit, with nothing learned."""
    text = _URL_USERINFO.sub(_scrub_url, text)
    text = _KEY_QUOTED.sub(_scrub_keyed, text)
    text = _KEY_EQ.sub(_scrub_keyed, text)
    text = _KEY_COLON.sub(_scrub_keyed, text)
    text = _BEARER.sub(_scrub_bearer, text)
    return _BASIC.sub(_scrub_basic, text)


def embedded_secrets(text: str) -> set[str]:
    """The secrets worth learning from ``text``: URL passwords (raw and percent-decoded), URL
    tokens, Bearer tokens and the passwords of Basic credentials. Values after ``password=`` and
    the like are cut where they stand but not learned: in free text such a match is too often a
    word (``authentication: required``), and a learned word would be cut from every record."""
    found: set[str] = set()
    for m in _URL_USERINFO.finditer(text):
        user, pw = m.group("user"), m.group("pw")
        if pw:
            found.update({pw, unquote(pw), unquote_plus(pw)})
        elif pw is None and len(user) >= MIN_SECRET_LEN and m.group("name").lower() not in LOGIN_SCHEMES:
            found.update({user, unquote(user)})
    for m in _BEARER.finditer(text):
        value = m.group("val")
        if len(value) >= MIN_SECRET_LEN or not value.isalpha():
            found.add(value)
    for m in _BASIC.finditer(text):
        pair = _basic_pair(m.group("val"))
        if pair is not None:
            found.update({m.group("val"), pair.split(":", 1)[1]})
    return {s.strip() for s in found if s.strip() and s.strip() != REDACTED}


def embedded_pairs(text: str) -> set[str]:
    """The ``user:password`` pairs of the URLs in ``text`` (raw and percent-decoded): learned for
    their encodings only (a ``Basic`` header is base64 of the pair), so that the user name of a
    URL stays readable where the password is cut."""
    pairs: set[str] = set()
    for m in _URL_USERINFO.finditer(text):
        user, pw = m.group("user"), m.group("pw")
        if user and pw:
            pairs.update({f"{user}:{pw}", f"{unquote(user)}:{unquote(pw)}"})
    return pairs


@dataclass
class Redactor:
    """Redacts secret-named keys, secrets recognisable by their syntax and every learned secret
    value wherever it appears (see the module docstring for the rules and the length tiers).

    ``secrets`` holds the learned values themselves; their encodings are derived when matching."""

    secrets: set[str] = field(default_factory=set)
    # matched in their encodings but not as they are (see embedded_pairs)
    encoded_only: set[str] = field(default_factory=set)
    _compiled_for: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)
    _patterns: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    _regexes: dict[tuple[str, ...], re.Pattern[str]] = field(default_factory=dict, init=False, repr=False,
                                                             compare=False)
    _exact: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def learn(self, value: Any) -> None:
        """Remember one secret value (of any length; flags such as ``true`` are not secrets).
        A multi-line secret (a PEM key) is also learned line by line."""
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not isinstance(value, str):
            return
        value = value.strip()
        if not value or value == REDACTED or _is_flag(value):
            return
        self.secrets.add(value)
        if "\n" in value:
            for line in value.splitlines():
                line = line.strip()
                if len(line) >= MIN_SECRET_LEN and line != REDACTED:
                    self.secrets.add(line)

    def learn_from(self, data: Any, under_secret: bool = False, _depth: int = 0) -> None:
        """Learn the values under secret-named keys, anywhere in ``data``, and the secrets any
        string carries in a recognisable place (a URL's password, ``password=...``)."""
        if _depth > MAX_DEPTH:
            return
        if under_secret and _plain(data) == REDACTED:
            # a vault-encrypted value: learn its plain text (kept in memory only) so that a
            # message into which it was templated is still redacted
            try:
                self.learn(str(data))
            except Exception:  # noqa: BLE001 - what cannot be decrypted cannot leak either
                return
            return
        data = _plain(data)
        if isinstance(data, Mapping):
            for key, value in data.items():
                self.learn_from(value, under_secret or is_secret_key(key), _depth + 1)
        elif isinstance(data, list | tuple | set | frozenset):
            for value in data:
                self.learn_from(value, under_secret, _depth + 1)
        elif isinstance(data, str):
            if under_secret:
                self.learn(data)
            for secret in embedded_secrets(data):
                self.learn(secret)
            self.encoded_only.update(embedded_pairs(data))

    def _compile(self) -> None:
        snapshot = frozenset(self.secrets) | frozenset(f"\0{p}" for p in self.encoded_only)
        if snapshot == self._compiled_for:
            return
        exact: set[str] = set()
        patterns: dict[str, str] = {}
        for secret in self.secrets | self.encoded_only:
            forms = encodings(secret)
            if secret not in self.secrets:
                forms = {f for f in forms if f != secret and f != json.dumps(secret)[1:-1] and f != html.escape(secret)}
            for form in forms:
                if len(secret) >= MIN_SECRET_LEN:
                    patterns[form] = re.escape(form)
                elif len(secret) >= BOUNDED_SECRET_LEN:
                    patterns.setdefault(form, rf"(?<![{_WORD}]){re.escape(form)}(?![{_WORD}])")
                else:
                    exact.add(form)
        # longest first: at one position the alternation takes the first branch that matches
        self._patterns = {f: patterns[f] for f in sorted(patterns, key=lambda f: (-len(f), f))}
        self._regexes = {}
        self._exact = frozenset(exact)
        self._compiled_for = snapshot

    def redact(self, data: Any, _depth: int = 0) -> Any:
        """A JSON-native copy of ``data`` with every secret replaced by :data:`REDACTED`."""
        data = _plain(data)
        if _depth > MAX_DEPTH:
            return "<too deep>"
        if isinstance(data, Mapping):
            out: dict[str, Any] = {}
            for key, value in data.items():
                name = self.redact_text(str(key))
                if name in out:  # two keys that were secrets: keep both values, not the last
                    n = 2
                    while f"{name}#{n}" in out:
                        n += 1
                    name = f"{name}#{n}"
                secret = is_secret_key(key) and value not in (None, "", REDACTED)
                out[name] = REDACTED if secret else self.redact(value, _depth + 1)
            return out
        if isinstance(data, list | tuple | set | frozenset):
            return [self.redact(v, _depth + 1) for v in data]
        if isinstance(data, str):
            return self.redact_text(data)
        return data

    def redact_text(self, text: str) -> str:
        """``text`` with learned secrets (and their encodings) and syntactic secrets cut out."""
        self._compile()
        if text.strip() in self._exact:
            return REDACTED
        # a plain substring search first: one regex over hundreds of alternatives would try
        # every one at every position of a long stdout
        present = tuple(f for f in self._patterns if f in text)
        if present:
            pattern = self._regexes.get(present)
            if pattern is None:
                if len(self._regexes) > 256:
                    self._regexes.clear()
                pattern = self._regexes[present] = re.compile("|".join(self._patterns[f] for f in present))
            text = REDACTED.join(pattern.sub(REDACTED, part) for part in text.split(REDACTED))
        return redact_syntax(text)


def redact(data: Any, secrets: Any = ()) -> Any:
    """One-shot: ``data`` redacted by key names and syntax, plus the given secret values."""
    redactor = Redactor()
    for secret in secrets:
        redactor.learn(secret)
    return redactor.redact(data)
