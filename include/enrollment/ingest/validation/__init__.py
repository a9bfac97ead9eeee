"""Batch validation against the event contracts: what ``land`` calls (``validate_guarded``).

The stages of one call, a module each: ``screen`` (bytes screened, the fast path through typed
decoders, the per-record path for what it refuses, one Arrow table of what could be read),
``checks`` (the contract's checks, vectorised), ``reasons`` (reason codes, one per problem),
``trees`` (the contracts as trees: the parse schema and the decoders) and ``validate`` (the call,
and the valid and quarantine tables)."""

from enrollment.ingest.validation.reasons import REASON_CODES, ValidationResult
from enrollment.ingest.validation.trees import DEFAULT_MAX_MESSAGE_BYTES, PARSE_SCHEMA
from enrollment.ingest.validation.validate import (
    QUARANTINE_SCHEMA,
    VALID_COLUMNS,
    ValidatorBroken,
    validate_batch,
    validate_guarded,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PARSE_SCHEMA",
    "QUARANTINE_SCHEMA",
    "REASON_CODES",
    "VALID_COLUMNS",
    "ValidationResult",
    "ValidatorBroken",
    "validate_batch",
    "validate_guarded",
]
