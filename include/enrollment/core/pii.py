"""Personal data: keyed tokens and masks.

A **token** stands for a value that must not be kept in clear (a tax id, or a partner id in the
erasure ledger): an HMAC-SHA256 under the pipeline's secret key, truncated to 160 bits, tagged
with the key's id — ``tok1:<key id>:<base32>``. The same value gives the same token under the
same key (tokens join and deduplicate); without the key nobody can test a guess, so a token
cannot be reversed by trying every tax id of a country (the space is small: 10^9 SSNs).

The key lives in an Airflow connection (``enrollment_pii``: login = key id, password = key,
extra ``{"retired": {"<key id>": "<key>"}}``) or, outside Airflow, in ``ENROLLMENT_PII_KEY_ID`` /
``ENROLLMENT_PII_KEY`` / ``ENROLLMENT_PII_RETIRED_KEYS`` (JSON). Rotation: a new key id and key
become current; the old ones move to ``retired`` so that values can still be matched against
tokens made under them (``Keyring.matches``); see docs/personal-data.md.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

TOKEN_PREFIX = "tok1"


TOKEN_RE = re.compile(r"^tok1:[A-Za-z0-9_-]{1,16}:[a-z2-7]{32}$")


KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


MIN_KEY_BYTES = 16


# What a tax id is, for its token: separators are the producer's formatting, not the identity.
_SEPARATORS = re.compile(r"[\s.\-/]")


def normalise(value: str, kind: str) -> str:
    return _SEPARATORS.sub("", value).upper() if kind == "tax_id" else value


@dataclass(frozen=True)
class Keyring:
    key_id: str
    key: bytes = field(repr=False)
    retired: dict[str, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for kid, key in {self.key_id: self.key, **self.retired}.items():
            if not KEY_ID_RE.match(kid):
                raise ValueError(f"personal-data key id {kid!r}: 1-16 letters, digits, '_' or '-'")
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"personal-data key {kid!r} is shorter than {MIN_KEY_BYTES} bytes")

    def token(self, value: str, kind: str, key_id: str | None = None) -> str:
        """The token of ``value`` (of kind ``tax_id``, ``partner_id`` …) under the current key."""
        kid = key_id or self.key_id
        key = self.key if kid == self.key_id else self.retired[kid]
        message = f"{kind}\x1f{normalise(value, kind)}".encode("utf-8", "surrogatepass")
        digest = hmac.new(key, message, hashlib.sha256).digest()[:20]
        return f"{TOKEN_PREFIX}:{kid}:{base64.b32encode(digest).decode('ascii').lower()}"

    def matches(self, value: str, kind: str, token: str) -> bool:
        """Whether ``token`` stands for ``value``, under whichever known key made it."""
        parts = token.split(":")
        if (
            len(parts) != 3
            or parts[0] != TOKEN_PREFIX
            or (parts[1] != self.key_id and parts[1] not in self.retired)
        ):
            return False
        return hmac.compare_digest(self.token(value, kind, parts[1]), token)

    def tokens(self, value: str, kind: str) -> list[str]:
        """The value's token under every known key (to find what was tokenised before a
        rotation)."""
        return [self.token(value, kind, kid) for kid in (self.key_id, *self.retired)]

    @classmethod
    def from_secret(
        cls, key_id: str, secret: str, retired: dict[str, str] | None = None
    ) -> Keyring:
        return cls(
            key_id,
            secret.encode("utf-8"),
            {k: v.encode("utf-8") for k, v in (retired or {}).items()},
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Keyring:
        env = os.environ if env is None else env
        if not env.get("ENROLLMENT_PII_KEY"):
            raise RuntimeError(
                "set ENROLLMENT_PII_KEY and ENROLLMENT_PII_KEY_ID "
                "(for the local stack: source .stack/stack.env)"
            )
        return cls.from_secret(
            env.get("ENROLLMENT_PII_KEY_ID", "k1"),
            env["ENROLLMENT_PII_KEY"],
            json.loads(env.get("ENROLLMENT_PII_RETIRED_KEYS") or "{}"),
        )


def is_token(value: object) -> bool:
    return isinstance(value, str) and TOKEN_RE.match(value) is not None


# Keys (lower case, letters and digits only) whose values are tax identifiers, and the other
# personal values a quarantined message is masked for.
TAX_ID_KEYS = frozenset({"taxid", "ssn", "cpf", "rrn", "tin", "nationalid", "rfc", "cuit", "rut"})


SENSITIVE_KEYS = TAX_ID_KEYS | {
    "dateofbirth",
    "birthdate",
    "dob",
    "email",
    "emailaddress",
    "phone",
    "phonenumber",
    "mobile",
}


# A run of at least 6 digits, possibly separated by '-', '.', '/' or ' ': the shape of every tax id
# the markets know (US SSN 9 digits, BR CPF 11, KR RRN 13, CO 6-10 …) and of phone numbers and
# dates.
TAX_ID_SHAPED = re.compile(r"\d(?:[-./ ]?\d){5,}")


_LEX = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[{}\[\]:,]|\s+|[^\s"{}\[\]:,]+', re.S)


_CHAR = re.compile(r"\\u[0-9a-fA-F]{4}|\\.|.", re.S)


_LITERALS = frozenset({"true", "false", "null"})


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")


# Identifier and timestamp values keep their digits when they have their contract's shape (an
# operator needs the event id, the partner id and the instants): uuid, partner id, ISO date/time.
_EXEMPT_KEY = re.compile(r"(^|_)(id|at|date)$")


_EXEMPT_VALUE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[A-Z]{2}[0-9A-Z]{10}"
    r"|\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
)


# Messages that cannot hold a tax-id key are not walked (most of them): no key name, and no escape
# of an ASCII character that could spell one.
_TAX_KEY_HINTS = (
    b"tax",
    b'ssn"',
    b'cpf"',
    b'rrn"',
    b'tin"',
    b"national",
    b'rfc"',
    b'cuit"',
    b'rut"',
)


_ASCII_ESCAPE = re.compile(rb"\\u00[0-7]")


def _may_hold_tax_key(raw: bytes) -> bool:
    low = raw.lower()  # substring tests: ~20x faster than one case-insensitive pattern
    return any(hint in low for hint in _TAX_KEY_HINTS) or (
        b"\\u00" in low and _ASCII_ESCAPE.search(low) is not None
    )


def _key_name(token: str) -> str:
    """A string token as a key: its decoded text, lower case (escapes decoded when they can be)."""
    text = token[1:-1] if len(token) >= 2 and token.endswith('"') else token[1:]
    if "\\" in text:
        with contextlib.suppress(Exception):
            text = json.loads(token if token.endswith('"') and len(token) >= 2 else token + '"')
    return text.lower() if isinstance(text, str) else ""


def _norm(key: str | None) -> str:
    return re.sub(r"[^a-z0-9]", "", key) if key else ""


def shape(text: str) -> str:
    """``text`` masked by shape: digits -> '#', letters -> 'x', everything else kept (separators,
    '@', '+', JSON escapes; a ``\\uXXXX`` escape counts as one character, masked '#')."""

    def one(m: re.Match[str]) -> str:
        c = m.group()
        if c[0] == "\\" and len(c) > 1:
            return "#" if c[1] == "u" else c
        return "#" if c.isdigit() else "x" if c.isalpha() else c

    return _CHAR.sub(one, text)


def _digits_masked(text: str) -> str:
    return TAX_ID_SHAPED.sub(lambda m: re.sub(r"\d", "#", m.group()), text)


def _rewrite(text: str, value: Callable[[str | None, str], str], capture: frozenset[str]) -> str:
    """``text`` with every scalar token replaced by ``value(key, token)`` (``key``: the lower-case
    name of the key whose value it is, None for a key itself, an array element or stray text).
    Inside an object or array that is the value of a key in ``capture`` every scalar is that
    key's."""
    out: list[str] = []
    last_string: str | None = (
        None  # the previous significant token, when a string (a key if ':' follows)
    )
    key: str | None = None
    expecting = False  # after ':'
    held: str | None = None  # the captured key whose container we are in
    depth = 0
    for m in _LEX.finditer(text):
        tok = m.group()
        c = tok[0]
        if c.isspace():
            out.append(tok)
            continue
        if c == ":":
            key, expecting = (_key_name(last_string) if last_string is not None else None), True
            last_string = None
            out.append(tok)
            continue
        if c in "{[":
            if depth:
                depth += 1
            elif expecting and _norm(key) in capture:
                held, depth = key, 1
            expecting, last_string = False, None
            out.append(tok)
            continue
        if c in "}]":
            if depth:
                depth -= 1
                held = held if depth else None
            expecting, last_string = False, None
            out.append(tok)
            continue
        if c == ",":
            expecting, last_string = False, None
            out.append(tok)
            continue
        owner = held if depth else key if expecting else None
        out.append(value(owner, tok))
        expecting = False
        last_string = tok if c == '"' else None
    return "".join(out)


def _mask_token(key: str | None, tok: str) -> str:
    is_string = tok[0] == '"'
    body = (
        tok[1:-1]
        if is_string and len(tok) >= 2 and tok.endswith('"')
        else tok[1:]
        if is_string
        else tok
    )
    # A masked string keeps its quotes (or their absence: unterminated); a masked JSON number
    # becomes a string (the JSON stays JSON); any other stray text stays unquoted (byte for byte
    # but the mask).
    if is_string:
        opening, closing = '"', ('"' if len(tok) >= 2 and tok.endswith('"') else "")
    else:
        opening = closing = '"' if _NUMBER.fullmatch(tok) else ""
    if _norm(key) in SENSITIVE_KEYS:
        if not is_string and tok in _LITERALS:
            return tok
        return opening + shape(body) + closing
    if (
        key is not None
        and _EXEMPT_KEY.search(re.sub(r"[^a-z0-9]+", "_", key))
        and _EXEMPT_VALUE.fullmatch(body)
    ):
        return tok
    masked = _digits_masked(body)
    if masked == body:
        return tok
    return opening + masked + closing


def mask_raw(raw: bytes | None) -> bytes | None:
    """A refused message as quarantine keeps it: every byte as it came except the values of
    sensitive keys (tax ids, dates of birth, emails, phones; anywhere, any structure, also in
    text that is not JSON), masked by shape, and any other tax-id-shaped run of digits, its digits
    masked. Total: any bytes in, bytes out."""
    if raw is None:
        return None
    text = bytes(raw).decode("utf-8", "surrogateescape")
    return _rewrite(text, _mask_token, SENSITIVE_KEYS).encode("utf-8", "surrogateescape")


def mask_keys(text: str, keys: frozenset[str]) -> str:
    """``text`` (JSON, or what is left of it) with every value under one of ``keys`` (normalised:
    ``first_name`` is ``firstname``), and inside their objects and arrays, replaced by its shape."""

    def masked(key: str | None, tok: str) -> str:
        if _norm(key) not in keys or tok in _LITERALS:
            return tok
        if tok[0] == '"':
            closing = '"' if len(tok) >= 2 and tok.endswith('"') else ""
            return '"' + shape(tok[1 : len(tok) - len(closing)]) + closing
        return shape(tok)

    return _rewrite(text, masked, keys)


def tokenise_json(raw: bytes, keyring: Keyring) -> bytes:
    """A valid event's bytes with the value of every tax-id key (``payload.tax_id``, and anywhere
    else: foreign fields travel in the raw event) replaced by its token; every other byte kept.
    Total: never raises, whatever the bytes."""
    if not _may_hold_tax_key(raw):
        return raw

    def token(key: str | None, tok: str) -> str:
        if _norm(key) not in TAX_ID_KEYS or tok in _LITERALS:
            return tok
        value = tok
        if tok[0] == '"':
            try:
                value = json.loads(tok)
            except Exception:
                value = tok.strip('"')
        if is_token(value):
            return tok
        return '"' + keyring.token(str(value), "tax_id") + '"'

    text = bytes(raw).decode("utf-8", "surrogateescape")
    return _rewrite(text, token, TAX_ID_KEYS).encode("utf-8", "surrogateescape")
