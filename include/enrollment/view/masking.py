"""Nothing the operator page returns holds a personal value: partner ids masked everywhere,
free texts (ledger and health details) scrubbed, quarantined messages masked again on read
(``core.pii.mask_raw``: rows written before masking existed)."""

from __future__ import annotations

import re

from enrollment.core.pii import TAX_ID_SHAPED, mask_keys, mask_raw

# A partner (or sponsor) id: two letters of the region and ten of the id (enrollment.simulator); a
# word of that shape anywhere in a text is masked, whatever key it came under.
PARTNER_ID = re.compile(r"\b([A-Z]{2})[0-9A-Z]{10}\b")


# Shown to every viewer of the page, so beyond what quarantine masks (tax ids, birth dates,
# emails, phones): names and the whole address too, by shape.
PAGE_MASKED_KEYS = frozenset(
    {
        "firstname",
        "lastname",
        "name",
        "fullname",
        "address",
        "line1",
        "line2",
        "street",
        "postalcode",
        "zip",
        "city",
    }
)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


EMAIL = re.compile(r"[^\s\"'<>@,;:]+@[^\s\"'<>@,;:]+\.[A-Za-z]{2,}")


# Of a quarantined message shown (cut before masking: the lexer masks a value cut short too).
EXAMPLE_BYTES = 2048


def mask_partner_id(value: str | None) -> str | None:
    """``AB1234567890`` → ``AB••••••••••``: the region prefix stays (it says where), the id does
    not."""
    if not value:
        return value
    return value[:2] + "•" * max(0, len(value) - 2)


def mask_partner_ids(text: str) -> str:
    return PARTNER_ID.sub(lambda m: m.group(1) + "•" * 10, text)


def scrub(text: str | None, limit: int = 300) -> str | None:
    """A free text (a ledger detail, a failure message) fit to show: emails, partner ids and
    tax-id-shaped digit runs masked, cut to ``limit`` characters."""
    if text is None:
        return None
    text = EMAIL.sub(lambda m: re.sub(r"[A-Za-z0-9]", "x", m.group()), str(text))
    text = TAX_ID_SHAPED.sub(lambda m: re.sub(r"\d", "#", m.group()), text)
    text = mask_partner_ids(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def masked_example(raw: bytes | None) -> str | None:
    """A quarantined message as the page shows it: masked again (``core.pii.mask_raw``), partner ids
    masked, decoded leniently (a refused message may not be UTF-8)."""
    if raw is None:
        return None
    masked = mask_raw(bytes(raw))
    assert masked is not None  # bytes in, bytes out
    text = masked.decode("utf-8", "replace")
    text = mask_keys(text, PAGE_MASKED_KEYS)
    return _CONTROL.sub("\ufffd", mask_partner_ids(text))
