"""The event contracts, as data: one ``FieldSpec`` per field, per event type and schema version.

From these tables come the Parquet/Arrow parse schema, the batch validator's checks, the
published JSON Schemas and the simulator's fault injection, so the four cannot disagree.

Every event has the same envelope (``ENVELOPE``) and a payload per type (``PAYLOADS``). Schema
version 2 is a backward-compatible evolution of version 1 (new fields, some mandatory), so both
are accepted side by side; any other version is quarantined as ``unknown_schema_version``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

from enrollment.config import markets_in_force

STRING, NUMBER, INTEGER, BOOLEAN = "string", "number", "integer", "boolean"


EVENT_TYPES = (
    "partner.enrolled",
    "partner.updated",
    "partner.terminated",
    "order.placed",
    "subscription.changed",
)


SCHEMA_VERSIONS: dict[str, tuple[int, ...]] = {t: (1, 2) for t in EVENT_TYPES}


class ConfiguredRegions(Sequence[str]):
    """The region codes of the configuration in force (its region registry), read when used: the
    contract knows the regions a deployment configures, not a list of its own."""

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return markets_in_force().regions[index]

    def __len__(self) -> int:
        return len(markets_in_force().regions)

    def __repr__(self) -> str:
        return f"ConfiguredRegions({list(self)})"


REGIONS: Sequence[str] = ConfiguredRegions()


CHANNELS = ("web", "mobile", "call-center")


# What every downstream holds exactly (the contract's edges, enforced by the validator):
# integers within I-JSON's safe range (RFC 7493: exact in BigQuery INT64, Firestore, Solr and
# every JSON reader, including JavaScript's), numbers of the same magnitude, text of at most
# TEXT_MAX_CHARS characters (Marketing Cloud's text fields, far below Solr's 32,766-byte term and
# Firestore's 1 MiB), instants from 0001-01-01 to 9999-12-31 UTC (BigQuery's and Firestore's
# TIMESTAMP range), no more than MAX_NESTING levels of JSON nesting in the whole message.
SAFE_INTEGER = 2**53 - 1


NUMBER_LIMIT = float(2**53)


TEXT_MAX_CHARS = 256


MAX_NESTING = 64


# RE2 patterns (Arrow's regex engine) that Python's `re` reads the same way.
FORMATS: dict[str, str] = {
    "uuid": r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
    "timestamp": (
        r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
        r"T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?"  # any fraction (RFC 3339)
        r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
    ),
    "date": r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$",
    "email": r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$",
    "phone": r"^\+[1-9]\d{6,14}$",
    "partner_id": r"^[A-Z]{2}[0-9A-Z]{10}$",
    "language": r"^[a-z]{2,3}-[A-Z]{2}$",
    "country": r"^[A-Z]{2}$",
    "currency": r"^[A-Z]{3}$",
    "sku": r"^[A-Z0-9][A-Z0-9-]{2,31}$",
    "order_id": r"^O[0-9A-Z]{12}$",
    "subscription_id": r"^S[0-9A-Z]{12}$",
    "source_system": r"^[a-z0-9][a-z0-9.-]{2,63}$",
    "agreement_version": r"^\d{4}\.\d{1,2}$",
}


# When a field is mandatory. Conditions are named here and evaluated by the validator and the
# JSON Schema generator from the market tables; "market" means the event's country belongs to
# its region (rules of a country outside the region never apply: that is its own reason).
CONDITIONS: dict[str, str] = {
    "always": "always",
    "never": "optional",
    "tax_id_market": (
        "when the address country requires a tax identifier (its market rules' tax_id)"
    ),
    "state_market": (
        "when the address country requires a state or province (its market rules' state_required)"
    ),
    "consent_region": (
        "when the region requires recorded consents"
        " (`consent_required` in the configuration's regions)"
    ),
    "without_first_order": (
        "when no first order is given (an enrollment kit or a first order is needed)"
    ),
    "not_cancelled": "unless the action is 'cancelled'",
}


@dataclass(frozen=True)
class FieldSpec:
    path: str  # dotted, from the message root: "payload.address.postal_code"
    kind: str = STRING
    required: str = "always"  # a key of CONDITIONS
    format: str | None = None  # a key of FORMATS
    by_country: str | None = None  # a Market attribute holding the country's own pattern
    enum: Sequence[str] | None = None
    minimum: float | None = None
    versions: tuple[int, ...] = (1, 2)
    missing_reason: str | None = None  # default: "missing:<path>"
    description: str = ""
    max_length: int = TEXT_MAX_CHARS  # strings: characters (Unicode scalar values)

    def __post_init__(self) -> None:
        assert self.required in CONDITIONS, self.required
        assert self.format is None or self.format in FORMATS, self.format

    @property
    def missing_code(self) -> str:
        return self.missing_reason or f"missing:{self.path}"

    @property
    def format_code(self) -> str:
        return f"bad_format:{self.path}"

    @property
    def too_long_code(self) -> str:
        return f"too_long:{self.path}"

    @property
    def range_code(self) -> str:
        return f"out_of_range:{self.path}"

    @property
    def checked_format(self) -> bool:
        return bool(
            self.format
            or self.by_country
            or self.enum
            or self.minimum is not None
            or self.kind == INTEGER
        )


ENVELOPE: tuple[FieldSpec, ...] = (
    FieldSpec(
        "event_id",
        format="uuid",
        description="Unique id of the event (UUID); the same id twice is a duplicate",
    ),
    FieldSpec("event_type", enum=EVENT_TYPES, description="What happened"),
    FieldSpec("schema_version", INTEGER, description="Version of this event type's contract"),
    FieldSpec("region", enum=REGIONS, description="The SAP Commerce region that emitted the event"),
    FieldSpec(
        "source_system",
        format="source_system",
        description="Emitting system, e.g. sap-commerce-emea",
    ),
    FieldSpec(
        "occurred_at", format="timestamp", description="When it happened (RFC 3339 with offset)"
    ),
    FieldSpec(
        "partner_id", format="partner_id", description="The sales partner (Kafka message key)"
    ),
    FieldSpec(
        "partner_version",
        INTEGER,
        minimum=1,
        description="Per-partner sequence: the newest version wins downstream",
    ),
    FieldSpec(
        "correlation_id",
        required="never",
        versions=(2,),
        description="Id of the storefront request that caused the event",
    ),
)


_ADDRESS = "payload.address"


_CHANGES = "payload.changes"


PAYLOADS: dict[str, tuple[FieldSpec, ...]] = {
    "partner.enrolled": (
        FieldSpec("payload.first_name", description="Given name"),
        FieldSpec("payload.last_name", description="Family name"),
        FieldSpec("payload.email", format="email"),
        FieldSpec("payload.phone", format="phone", description="E.164"),
        FieldSpec("payload.date_of_birth", format="date"),
        FieldSpec("payload.language", format="language", description="BCP 47, e.g. de-DE"),
        FieldSpec(f"{_ADDRESS}.line1"),
        FieldSpec(f"{_ADDRESS}.line2", required="never"),
        FieldSpec(f"{_ADDRESS}.city"),
        FieldSpec(
            f"{_ADDRESS}.state",
            required="state_market",
            versions=(2,),
            description="State or province code",
        ),
        FieldSpec(f"{_ADDRESS}.postal_code", by_country="postal_code"),
        FieldSpec(
            f"{_ADDRESS}.country",
            format="country",
            description="ISO 3166-1 alpha-2; must belong to the region",
        ),
        FieldSpec(
            "payload.sponsor_id",
            format="partner_id",
            missing_reason="sponsor_missing",
            description="Upline partner who sponsors the enrollment",
        ),
        FieldSpec(
            "payload.enrollment_kit.sku",
            format="sku",
            versions=(1,),
            description="Starter kit bought with the enrollment",
        ),
        FieldSpec(
            "payload.enrollment_kit.sku",
            format="sku",
            required="without_first_order",
            versions=(2,),
        ),
        FieldSpec(
            "payload.first_order.order_id",
            format="order_id",
            required="never",
            versions=(2,),
            description="A first order instead of a kit (v2)",
        ),
        FieldSpec("payload.agreement.contract_id", description="Signed partner agreement"),
        FieldSpec("payload.agreement.version", format="agreement_version"),
        FieldSpec("payload.agreement.accepted_at", format="timestamp"),
        FieldSpec(
            "payload.tax_id",
            required="tax_id_market",
            by_country="tax_id",
            description="Where the market requires one (e.g. US SSN/ITIN, Brazil CPF)",
        ),
        FieldSpec(
            "payload.consents.data_processing",
            BOOLEAN,
            required="consent_region",
            description="Must be granted (true) where required",
        ),
        FieldSpec("payload.consents.marketing_email", BOOLEAN, required="consent_region"),
        FieldSpec(
            "payload.consents.captured_at",
            format="timestamp",
            required="consent_region",
            versions=(2,),
        ),
        FieldSpec(
            "payload.consents.version",
            required="never",
            format="agreement_version",
            versions=(2,),
            description=(
                "Version of the consent text the partner answered; absent: the agreement's version"
            ),
        ),
        FieldSpec("payload.channel", enum=CHANNELS, versions=(2,)),
    ),
    "partner.updated": (
        FieldSpec(f"{_CHANGES}.first_name", required="never"),
        FieldSpec(f"{_CHANGES}.last_name", required="never"),
        FieldSpec(f"{_CHANGES}.email", required="never", format="email"),
        FieldSpec(f"{_CHANGES}.phone", required="never", format="phone"),
        FieldSpec(f"{_CHANGES}.language", required="never", format="language"),
        FieldSpec(f"{_CHANGES}.address.line1", required="never"),
        FieldSpec(f"{_CHANGES}.address.city", required="never"),
        FieldSpec(f"{_CHANGES}.address.postal_code", required="never", by_country="postal_code"),
        FieldSpec(f"{_CHANGES}.address.country", required="never", format="country"),
        FieldSpec(
            f"{_CHANGES}.consents.marketing_email",
            BOOLEAN,
            required="never",
            description="Marketing e-mail consent granted (true) or withdrawn (false)",
        ),
        FieldSpec(
            f"{_CHANGES}.consents.captured_at",
            required="never",
            format="timestamp",
            description="When the consent change was captured",
        ),
        FieldSpec(
            f"{_CHANGES}.consents.version",
            required="never",
            format="agreement_version",
            description="Version of the consent text answered",
        ),
        FieldSpec("payload.changed_by", enum=("partner", "support", "system"), versions=(2,)),
    ),
    "partner.terminated": (
        FieldSpec("payload.reason", enum=("voluntary", "compliance", "inactivity", "other")),
        FieldSpec("payload.effective_at", format="timestamp"),
    ),
    "order.placed": (
        FieldSpec("payload.order_id", format="order_id"),
        FieldSpec("payload.order_type", enum=("enrollment", "retail", "autoship")),
        FieldSpec("payload.currency", format="currency"),
        FieldSpec("payload.total_amount", NUMBER, minimum=0),
        FieldSpec(
            "payload.volume_points",
            NUMBER,
            minimum=0,
            description="Personal volume credited to the partner",
        ),
        FieldSpec("payload.line_count", INTEGER, minimum=1),
        FieldSpec("payload.channel", enum=CHANNELS, versions=(2,)),
    ),
    "subscription.changed": (
        FieldSpec("payload.subscription_id", format="subscription_id"),
        FieldSpec("payload.action", enum=("created", "modified", "paused", "resumed", "cancelled")),
        FieldSpec("payload.plan_sku", format="sku"),
        FieldSpec("payload.next_ship_date", format="date", required="not_cancelled"),
    ),
}


# Where each type keeps the country its market rules follow, and whose region it must match.
COUNTRY_PATH: dict[str, str] = {
    "partner.enrolled": f"{_ADDRESS}.country",
    "partner.updated": f"{_CHANGES}.address.country",
}


# Checks beyond single fields, with their reason codes.
SEMANTIC_REASONS = {
    "country_not_in_region": "the country is not one of the region's markets",
    "under_age": "younger than the market's minimum age at the time of the event",
    "consent_not_granted:payload.consents.data_processing": (
        "data-processing consent is mandatory and was refused"
    ),
    "sponsor_is_self": "a partner cannot sponsor themself",
    "missing:payload.changes": "an update must change at least one field",
}


# Families of field reasons, by prefix.
FIELD_REASONS = {
    "missing:<field>": "a mandatory field is absent, null or blank",
    "bad_format:<field>": (
        "the value has the wrong JSON type, pattern, enumeration, calendar date,"
        " or holds control characters"
    ),
    "too_long:<field>": (
        f"text longer than the field's maximum (default {TEXT_MAX_CHARS} characters)"
    ),
    "out_of_range:<field>": (
        "a well-formed value no downstream holds exactly: an integer or number beyond 2^53 - 1, "
        "an instant outside 0001-01-01..9999-12-31 UTC"
    ),
}


# Reasons decided before any field is looked at; a message with one of these gets no other.
ENVELOPE_REASONS = {
    "oversized": "the message is larger than the limit",
    "not_utf8": "the message is not UTF-8 text (or encodes a surrogate)",
    "unparsable": (
        "the message is not one JSON object (RFC 8259, strictly: no NaN or Infinity literals, "
        "no raw control characters or lone surrogate escapes in strings; of a key repeated in "
        "one object the last value counts, as in msgspec, Python and JavaScript)"
    ),
    "too_deep": f"the message nests JSON values deeper than {MAX_NESTING} levels",
    "validator_error": (
        "validation itself failed on the message (a defect, never the producer's fault):"
        " kept for re-processing"
    ),
    "unknown_event_type": "the event type is not one of the contracts",
    "unknown_schema_version": "the schema version is not accepted for this event type",
    "duplicate_event_id": "an earlier message of the batch has the same event id",
}


def fields(event_type: str, version: int) -> tuple[FieldSpec, ...]:
    """The envelope and payload fields of one contract (type and version)."""
    return tuple(f for f in ENVELOPE + PAYLOADS[event_type] if version in f.versions)


def all_fields() -> dict[str, FieldSpec]:
    """Every path of every contract, with its kind (the same path has one kind everywhere)."""
    found: dict[str, FieldSpec] = {}
    for spec in ENVELOPE + tuple(f for specs in PAYLOADS.values() for f in specs):
        seen = found.setdefault(spec.path, spec)
        assert seen.kind == spec.kind, (
            f"{spec.path} is {seen.kind} in one contract and {spec.kind} in another"
        )
    return found


PARTNER_EVENTS = ("partner.enrolled", "partner.updated", "partner.terminated")
