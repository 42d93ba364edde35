"""Keep secrets out of everything we write (promise 7).

Three nets:

- values registered here (``${ENV}`` values and literal config values under a
  secret-looking key, passwords found in URLs and DSNs, keys a component declares) are
  replaced wherever they appear, also URL-decoded, URL-encoded, JSON-escaped and
  base64-encoded (as in a Basic auth header);
- passwords inside URLs (``scheme://user:password@host``) are masked whatever their origin;
- the value of a secret-looking key in free text (``password=…``, ``"api_token": "…"``,
  ``Authorization: Bearer …``) is masked.

``is_secret_key`` is the one rule for "this name holds a secret": config keys at any
depth, ``${VAR}`` names and free-text keys all go through it.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any, overload
from urllib.parse import quote, quote_plus, unquote, unquote_plus

MASK = "***"
# A ${VAR} / ${VAR:-default} reference: not a secret itself (the ledger keeps it, so a
# night resumes from the environment), though its default may be one.
ENV_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")

# Secrets shorter than this are not registered: replacing "1" everywhere would
# mangle every number in a report and protect nothing.
_MIN_LEN = 4
# The same for base64 fragments: shorter ones could match inside ordinary base64 data.
_MIN_BASE64_LEN = 6

# Words that mark a secret wherever they stand in a name, matched at the end of a word
# (PGPASSWORD, clientsecret, apikey). Not "tokens": max_tokens, prompt_tokens are counts.
_STRONG = (
    "password", "passwords", "passwd", "passphrase", "secret", "secrets", "token",
    "credential", "credentials", "apikey", "authorization",
)  # fmt: skip
# Words too common to mark a secret unless they are the name's last word (db_pass,
# api_key, basic_auth), so auth_expired, KeyError, key_id are not secrets.
_WEAK = frozenset({"pass", "pwd", "key", "auth", "oauth", "cookie"})
# A last word that says the value names, locates, measures or reports on a secret
# without being one: api_key_env, password_file, auth_url, api_key_header, token_expired.
_NOT_THE_SECRET = frozenset(
    {
        "env", "envs", "var", "vars", "file", "files", "path", "dir", "url", "uri", "endpoint",
        "header", "headers", "name", "id", "type", "kind", "scope", "mode", "method", "param",
        "field", "prefix", "count", "length", "len", "size", "limit", "ttl", "timeout", "expiry",
        "expires", "expired", "provider", "source", "error", "errors", "exception", "failed",
        "invalid", "missing", "required", "refused", "rejected",
    }
)  # fmt: skip
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """Whether a key or variable name says its value is a secret: the one rule for
    config keys (any table, any depth), ``${VAR}`` names and keys in free text.

    The name is split into words (``_``, ``-``, ``.``, camelCase). It is secret-looking
    when a word ends in ``password``, ``secret``, ``token``, ``credentials``, ``apikey`` or
    ``authorization``, when ``api`` is followed by ``key``/``keys``, or when its last word
    is ``pass``, ``pwd``, ``key``, ``auth`` (``oauth``) or ``cookie``; but never when its
    last word says the value only names or locates the secret (``api_key_env``,
    ``password_file``, ``auth_url``, ``token_expired``).
    """
    words = [w.lower() for w in _WORD.findall(name)]
    if not words or words[-1] in _NOT_THE_SECRET:
        return False
    if any(w.endswith(_STRONG) for w in words) or words[-1] in _WEAK:
        return True
    return any(a == "api" and b in ("key", "keys") for a, b in itertools.pairwise(words))


# The password ends at the "@" before the host (the last one, as urlsplit reads it), so a
# raw "@" inside it is masked too.
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)"
    r"(?P<pw>[^\s/\"'<>]+?)(?=@[^@\s/\"'<>]*(?:[/?#\s\"'<>]|$))"
)
# name, separator (= or :, optionally quoted as in JSON or a Python repr), value; the
# name decides (is_secret_key). A ${VAR} reference is not a value: the ledger keeps it
# so a night can resume from the environment.
_ASSIGNMENT = re.compile(
    r"(?P<name>\b[A-Za-z][\w.-]*)(?P<sep>[\"']?\s*[=:]\s*[\"']?)"
    r"(?P<val>(?:(?:Bearer|Basic|Token)\s+)?(?!\$\{)[^\s'\",;&]+)"
)

# Every name is_secret_key accepts holds one of these, whatever its case: each word of
# _STRONG holds "pass" (followed by "w" or "p"), "secret", "token", "credential", "key" or
# "auth"; each of _WEAK is "pass" (the name's last word, so never followed by "ed"),
# "pwd", "key", "auth", "oauth" or "cookie"; "api" … "key" holds "key".
_HINTS = ("pwd", "secret", "token", "credential", "key", "auth", "cookie")


def may_name_a_secret(text: str) -> bool:
    """False when no secret-looking name can stand in ``text`` (a cheap test before the
    assignment pass; tests/test_secrets.py checks it against ``is_secret_key`` and
    ``redact`` against the full passes). "passed", in every attempt's line, is no hint."""
    low = text.lower()
    return any(hint in low for hint in _HINTS) or "pass" in low.replace("passed", "")


_lock = threading.Lock()
_secrets: set[str] = set()
_ordered: list[str] = []  # longest first, so a secret is masked before any part of it


def _forms(value: str) -> set[str]:
    """The ways ``value`` can show up in text we write."""
    forms = {value}
    for decoded in (unquote(value), unquote_plus(value)):  # a password written URL-encoded
        if len(decoded) >= _MIN_LEN:
            forms.add(decoded)
    for raw in list(forms):
        forms.update((quote(raw, safe=""), quote(raw), quote_plus(raw)))
        forms.add(json.dumps(raw)[1:-1])  # inside JSON: escaped quotes, \uXXXX
        data = raw.encode()
        for offset in range(3):  # its position inside a base64 stream, e.g. after "user:"
            start, end = -(-8 * offset // 6), 8 * (offset + len(data)) // 6
            if end - start < _MIN_BASE64_LEN:
                continue
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                # Only the characters that depend on the secret's bytes alone.
                forms.add(encode(b"\0" * offset + data)[start:end].decode())
    return forms


def register_secret(value: str | None) -> None:
    """Remember a secret value so that ``redact`` masks it from now on."""
    if not value or len(value) < _MIN_LEN:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        _ordered[:] = sorted(set(_ordered) | _forms(value), key=len, reverse=True)


def registered_secrets() -> list[str]:
    """The secret values registered so far (for a worker process of the night, which
    masks them in what it writes as this process does). Never log or write the list."""
    with _lock:
        return sorted(_secrets)


def secrets_in(text: str) -> list[str]:
    """The secrets in a config value: URL passwords, and values assigned with ``=`` to a
    secret-looking key (``host=db password=x`` DSNs, ``PGPASSWORD=x`` commands). Not
    ``key: value``, which in prose (a prompt in ``[settings]``) would register a word."""
    found = [m.group("pw") for m in _URL_PASSWORD.finditer(text)]
    pending = [text]
    while pending:
        for m in _ASSIGNMENT.finditer(pending.pop()):
            if m.group("sep").strip() == "=" and is_secret_key(m.group("name")):
                found.append(m.group("val").split()[-1])
            else:
                pending.append(m.group("val"))
    return found


def register_secrets_in(text: str) -> None:
    """Register every secret ``secrets_in`` finds in ``text``."""
    for value in secrets_in(text):
        register_secret(value)


def _mask_assignment(m: re.Match[str]) -> str:
    if is_secret_key(m.group("name")):
        return m.group("name") + m.group("sep") + MASK
    # Not a secret, but its value may hold one: "url: password=x".
    return m.group("name") + m.group("sep") + _ASSIGNMENT.sub(_mask_assignment, m.group("val"))


@overload
def redact(text: str) -> str: ...
@overload
def redact(text: None) -> None: ...
@overload
def redact(text: str | None) -> str | None: ...


def redact(text: str | None) -> str | None:
    """Return ``text`` with registered secrets, URL passwords and secret-looking key
    values masked."""
    if not text:
        return text
    with _lock:
        known = list(_ordered)
    for value in known:
        if value in text:
            text = text.replace(value, MASK)
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    if not may_name_a_secret(text):
        # The assignment pass (a Python callback per "name: value") would change nothing,
        # and it ran on every log line.
        return text
    return _ASSIGNMENT.sub(_mask_assignment, text)


def redact_data(data: Any, key: str = "") -> Any:
    """JSON-able ``data`` with its secrets masked, its structure intact (masking the
    dumped text could break it: a registered "2024" inside a number, ``"token": 5``).

    Strings pass through ``redact``. A string or a number held under a secret-looking key
    is masked whole, except a string's ``${VAR}`` references; the default of a ``${VAR:-default}`` is masked
    when its key or variable name looks secret. This is what the ledger keeps of a config:
    ``Plan.load_config`` reads masked values back from the unchanged file.
    """
    if isinstance(data, dict):
        return {redact(str(k)): redact_data(v, str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_data(v, key) for v in data]
    secret = bool(key) and is_secret_key(key)
    if not isinstance(data, str):
        # A number under a secret-looking key is a secret too (a PIN, a numeric token);
        # booleans and null say nothing.
        return MASK if secret and isinstance(data, int | float) and not isinstance(data, bool) else data
    parts, last = [], 0
    for match in ENV_REF.finditer(data):
        if match.start() > last:
            parts.append(MASK if secret else redact(data[last : match.start()]) or "")
        var, default = match.group("name"), match.group("default")
        if default is None:
            parts.append(match.group(0))
        elif default and (secret or is_secret_key(var)):
            parts.append(f"${{{var}:-{MASK}}}")
        else:
            parts.append(f"${{{var}:-{redact(default) or ''}}}")
        last = match.end()
    if last < len(data) or not parts:
        parts.append(MASK if secret and data else redact(data[last:]) or "")
    return "".join(parts)


def walk_secrets(data: Any, key: str = "") -> Iterable[str]:
    """Every string in a config table held under a secret-looking key (any depth; list
    items count as held by the list's key)."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from walk_secrets(v, str(k))
    elif isinstance(data, list):
        for v in data:
            yield from walk_secrets(v, key)
    elif isinstance(data, str) and key and is_secret_key(key):
        yield data


class RedactingFormatter(logging.Formatter):
    """A log formatter whose every line passes through ``redact``."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record)) or ""


class RedactingStream:
    """A text stream that masks secrets in everything written to it.

    The CLI puts it over sys.stdout and sys.stderr: the last net under whatever writes
    there without passing through ``redact`` (a user's print() or logger, warnings, an
    uncaught exception's message). Everything else is the wrapped stream's.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # a text stream, as click probes with write(b"")
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._stream.write(redact(text) or "")
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def redact_url(url: str) -> str:
    """A URL fit for logs and reports: its password masked."""
    return redact(url) or url
