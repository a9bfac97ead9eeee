"""The four regions' SAP Commerce systems, simulated: partners enroll under sponsors (a genealogy
that grows by preferential attachment, as MLM downlines do), then order, change subscriptions,
update their profiles and sometimes leave. Deterministic for a seed.

Each message comes with its **expected outcome**: valid, or quarantined with the exact reason
codes the contract gives it, derived from the fault the simulator injected (never by calling the
validator). Reasons are those of a batch holding the whole run; ``duplicate_of`` says which
earlier message a duplicate repeats, so a consumer cutting other batches can adjust.
"""

from __future__ import annotations

import base64
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar, cast, overload

import msgspec

from ..config import PipelineConfig, load_config
from ..contracts.markets import Markets
from ..contracts.spec import BOOLEAN, CHANNELS, INTEGER, STRING, FieldSpec
from ..contracts.spec import fields as contract_fields
from ..validation import DEFAULT_MAX_MESSAGE_BYTES
from . import hostile, people

# Of partner.updated events: a marketing-consent change besides the other changes.
CONSENT_CHANGE_SHARE = 0.1
EVENT_MIX = {
    "order.placed": 0.55,
    "subscription.changed": 0.25,
    "partner.updated": 0.10,
    "partner.enrolled": 0.07,
    "partner.terminated": 0.03,
}
KITS = ("KIT-STARTER", "KIT-BUSINESS", "KIT-PREMIUM")
PLANS = ("PLAN-NUTRITION-30", "PLAN-SKINCARE-60", "PLAN-WELLNESS-30", "PLAN-FAMILY-90")

DEFAULT_START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)

# An event as sent (a JSON object), or a part of one.
Event = dict[str, Any]


@dataclass
class FaultRates:
    """Share of messages that carry each fault (0.01 = 1 %)."""

    missing: float = 0.0  # a mandatory field absent, null or blank
    bad_format: float = 0.0  # a field of the wrong format or JSON type
    # Country outside the region, under age, consent refused, self-sponsored.
    rule_violation: float = 0.0
    duplicate: float = 0.0  # an earlier message sent again, later
    out_of_order: float = 0.0  # an event held back and sent after newer versions of its partner
    poison: float = 0.0  # bytes that are not UTF-8 or not JSON
    oversized: float = 0.0  # larger than the message limit
    unknown_version: float = 0.0  # an unknown schema version or event type
    # The edges of JSON and of the contract (simulator.hostile); not in the default mix.
    hostile: float = 0.0

    # The default mix of a total fault rate (`--faults 2%`).
    MIX: ClassVar[dict[str, float]] = {
        "missing": 0.22,
        "bad_format": 0.22,
        "rule_violation": 0.1,
        "duplicate": 0.14,
        "out_of_order": 0.14,
        "poison": 0.06,
        "oversized": 0.04,
        "unknown_version": 0.08,
    }

    @classmethod
    def mix(cls, total: float) -> FaultRates:
        return cls(**{name: total * share for name, share in cls.MIX.items()})

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def total(self) -> float:
        return sum(self.as_dict().values())


@dataclass(slots=True)
class Partner:
    partner_id: str
    region: str
    country: str
    version: int = 0
    active: bool = True
    marketing: bool | None = None  # the marketing e-mail consent last stated (None: never)


@dataclass(slots=True)
class Message:
    seq: int
    topic: str
    key: bytes
    value: bytes
    # The expected outcome, a JSON record (see the module's docstring); empty when made by hand.
    expected: dict[str, Any] = field(default_factory=dict)


class Simulator:
    """The stream of the configured regions' events, each message with its expected outcome
    (iterate, or ``take``), and single valid events on demand (``event_for``). What each event
    type says is ``_Payloads``'s to write; the faults and their outcomes are ``_FaultInjector``'s.
    All three draw from the same generators, in the same order: a seed gives one stream."""

    def __init__(
        self,
        seed: int = 7,
        faults: FaultRates | None = None,
        v2_share: float = 0.5,
        initial_partners: int = 200,
        start: datetime = DEFAULT_START,
        events_per_second: float = 6666.0,
        wall_clock: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        config: PipelineConfig | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        # Consent changes draw from their own generator: the rest of the stream stays what it was.
        self.consent_rng = random.Random(f"consent-{seed}")
        self.faults = faults or FaultRates()
        assert self.faults.total() <= 1.0, "fault rates add up to more than 100 %"
        self.v2_share = v2_share
        self.initial_partners = initial_partners
        self.start = start.timestamp()
        self.step = 1.0 / events_per_second
        self.wall_clock = wall_clock
        self.max_message_bytes = max_message_bytes
        self.config = config or load_config()
        self.topics = {r.code: r.topic for r in self.config.regions}
        self.markets = self.config.markets  # the region registry's countries and their rules
        self.prefix = {r.code: r.partner_prefix for r in self.config.regions}
        self.pools = people.build_pools(seed, tuple(self.markets.rules.items()))
        self.partners: dict[str, Partner] = {}
        self.active: list[Partner] = []
        self._position: dict[str, int] = {}  # partner id -> index in self.active
        self.sponsor_slots: dict[str, list[str]] = {
            r.code: [f"{r.partner_prefix}0000000000"] for r in self.config.regions
        }
        self.seq = 0
        # (release at seq, message) for out-of-order faults
        self.held: list[tuple[int, Message]] = []
        self.recent: deque[Message] = deque(maxlen=2000)  # candidates for duplicates
        self._fault_names = list(self.faults.as_dict())
        self._fault_cum = _cumulative(self.faults.as_dict().values())
        self._type_names = list(EVENT_MIX)
        self._type_cum = _cumulative(EVENT_MIX.values())
        self._region_names = [r.code for r in self.config.regions]
        shares = [r.share for r in self.config.regions]
        self._region_cum = _cumulative([share / sum(shares) for share in shares])
        self._payloads = _Payloads(
            self.rng, self.consent_rng, self.markets, self.pools, self.sponsor_slots
        )
        self._injector = _FaultInjector(self.rng, self.markets, self.topics, max_message_bytes)

    # -- the stream ------------------------------------------------------------------------------
    def __iter__(self) -> Simulator:
        return self

    def __next__(self) -> Message:
        if self.held and self.held[0][0] <= self.seq:
            _, message = self.held.pop(0)
            return self._emit(message)
        fault = _draw(
            self._fault_names,
            self._fault_cum,
            self.rng.random() * 1.0,
            none_above=self._fault_cum[-1],
        )
        if fault == "duplicate" and self.recent:
            original = self.rng.choice(self.recent)
            reasons = sorted(
                set(original.expected["reasons"])
                | ({"duplicate_event_id"} if original.expected["id_readable"] else set())
            )
            expected = {
                **original.expected,
                "fault": "duplicate",
                "reasons": reasons,
                "duplicate_of": original.seq,
                "out_of_order": False,
            }
            return self._emit(Message(0, original.topic, original.key, original.value, expected))
        event, partner = self._event(force_enrollment=fault == "rule_violation")
        message, fault = self._injector.message(event, partner, fault)
        if fault == "out_of_order":
            # Held back: newer versions of the partner go out first.
            self.held.append((self.seq + self.rng.randrange(20, 400), message))
            self.held.sort(key=lambda held: held[0])
            return next(self)
        return self._emit(message)

    def take(self, n: int) -> list[Message]:
        """The next n messages, then whatever is still held back: nothing generated is left out."""
        return [next(self) for _ in range(n)] + self.flush()

    def flush(self) -> list[Message]:
        held, self.held = self.held, []
        return [self._emit(message) for _, message in held]

    def _emit(self, message: Message) -> Message:
        message.seq = self.seq
        message.expected["seq"] = self.seq
        message.expected["outcome"] = "quarantined" if message.expected["reasons"] else "valid"
        self.seq += 1
        if message.expected["fault"] not in ("duplicate", "poison", "oversized"):
            self.recent.append(message)
        return message

    # -- events ------------------------------------------------------------------------------------
    def _now(self) -> float:
        return time.time() if self.wall_clock else self.start + self.seq * self.step

    def _event(self, force_enrollment: bool = False) -> tuple[Event, Partner]:
        if force_enrollment or len(self.active) < self.initial_partners:
            event_type = "partner.enrolled"
        else:
            event_type = _draw(self._type_names, self._type_cum, self.rng.random())
        if event_type == "partner.enrolled":
            region = _draw(self._region_names, self._region_cum, self.rng.random())
            partner = self._new_partner(region)
        else:
            partner = self.rng.choice(self.active)
        partner.version += 1
        now = self._now()
        version = 2 if self.rng.random() < self.v2_share else 1
        event: Event = {
            "event_id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            "event_type": event_type,
            "schema_version": version,
            "region": partner.region,
            "source_system": f"sap-commerce-{partner.region.lower()}",
            "occurred_at": _timestamp(now),
            "partner_id": partner.partner_id,
            "partner_version": partner.version,
        }
        if version == 2 and self.rng.random() < 0.5:
            event["correlation_id"] = f"req-{self.rng.getrandbits(48):012x}"
        event["payload"] = self._payloads.of(event_type, partner, version, now)
        if event_type == "partner.terminated":
            self._terminate(partner)
        return event, partner

    def event_for(
        self, event_type: str, country: str, version: int, **payload_overrides: Any
    ) -> Event:
        """One valid event of a given type, market and schema version (for tests and examples)."""
        region = self.markets.country_region(country)
        if region is None:
            raise KeyError(f"{country} is a market of no configured region")
        partner = self._new_partner(region)
        partner.country = country
        partner.version += 1
        now = self._now()
        event: Event = {
            "event_id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            "event_type": event_type,
            "schema_version": version,
            "region": region,
            "source_system": f"sap-commerce-{region.lower()}",
            "occurred_at": _timestamp(now),
            "partner_id": partner.partner_id,
            "partner_version": partner.version,
        }
        event["payload"] = self._payloads.of(event_type, partner, version, now) | payload_overrides
        return event

    def _new_partner(self, region: str) -> Partner:
        while True:
            pid = self.prefix[region] + _base32(self.rng.getrandbits(64), 10)
            if pid not in self.partners:
                break
        partner = Partner(pid, region, self.rng.choice(self.markets.countries[region]))
        self.partners[pid] = partner
        self._position[pid] = len(self.active)
        self.active.append(partner)
        return partner

    def _terminate(self, partner: Partner) -> None:
        """Swap-remove from the active list: O(1), so terminations cost nothing at scale."""
        partner.active = False
        i = self._position.pop(partner.partner_id)
        last = self.active.pop()
        if last is not partner:
            self.active[i] = last
            self._position[last.partner_id] = i

    def _required_here(self, spec: FieldSpec, event: Event) -> bool:
        """Whether the contract makes ``spec`` mandatory in ``event`` (the contract tests ask)."""
        return self._injector.required_here(spec, event)


class _Payloads:
    """The payload of each event type for a partner, as its region's SAP Commerce system sends it.
    Draws from the simulator's generators (``rng``, ``consent_rng``) and grows its genealogy
    (``sponsor_slots``)."""

    def __init__(
        self,
        rng: random.Random,
        consent_rng: random.Random,
        markets: Markets,
        pools: dict[str, people.Pool],
        sponsor_slots: dict[str, list[str]],
    ) -> None:
        self.rng, self.consent_rng = rng, consent_rng
        self.markets, self.pools, self.sponsor_slots = markets, pools, sponsor_slots

    def of(self, event_type: str, partner: Partner, version: int, now: float) -> Event:
        """The payload of an ``event_type`` event of ``partner`` at schema ``version``."""
        build: Callable[[Partner, int, float], Event] = getattr(
            self, "_" + event_type.replace(".", "_")
        )
        return build(partner, version, now)

    def _sponsor(self, partner: Partner) -> str:
        slots = self.sponsor_slots[partner.region]
        sponsor = self.rng.choice(slots)
        # Preferential attachment: every recruit gives its sponsor one more chance to be drawn.
        slots.append(sponsor)
        slots.append(partner.partner_id)
        return sponsor

    def _partner_enrolled(self, partner: Partner, version: int, now: float) -> Event:
        rng, country = self.rng, partner.country
        market, pool = self.markets.rules[country], self.pools[country]
        first, last = rng.choice(pool.first_names), rng.choice(pool.last_names)
        today = datetime.fromtimestamp(now, UTC).date()
        dob = today - timedelta(days=rng.randrange(21 * 366, 70 * 365))
        payload: Event = {
            "first_name": first,
            "last_name": last,
            "email": people.email(first, last, pool, rng),
            "phone": people.phone(country, rng),
            "date_of_birth": dob.isoformat(),
            "language": rng.choice(market.languages),
            "address": {
                "line1": rng.choice(pool.streets),
                "city": rng.choice(pool.cities),
                "postal_code": people.postal_code(country, market, rng),
                "country": country,
            },
            "sponsor_id": self._sponsor(partner),
        }
        if version == 2 and market.state_required:
            payload["address"]["state"] = people.state(country, rng)
        if version == 2 and rng.random() < 0.3:
            payload["first_order"] = {"order_id": self._id("O")}
        else:
            payload["enrollment_kit"] = {"sku": rng.choice(KITS)}
        payload["agreement"] = {
            "contract_id": f"PA-{country}-{today.year}",
            "version": f"{today.year}.1",
            "accepted_at": _timestamp(now - rng.randrange(5, 600)),
        }
        if market.tax_id:
            payload["tax_id"] = people.tax_id(country, market, rng)
        if partner.region in self.markets.consent_regions or rng.random() < 0.5:
            payload["consents"] = {"data_processing": True, "marketing_email": rng.random() < 0.6}
            if version == 2:
                payload["consents"]["captured_at"] = payload["agreement"]["accepted_at"]
                if self.consent_rng.random() < 0.5:  # else the consent version is the agreement's
                    payload["consents"]["version"] = payload["agreement"]["version"]
            partner.marketing = payload["consents"]["marketing_email"]
        if version == 2:
            payload["channel"] = rng.choice(CHANNELS)
        return payload

    def _partner_updated(self, partner: Partner, version: int, now: float) -> Event:
        rng, country = self.rng, partner.country
        market, pool = self.markets.rules[country], self.pools[country]
        changes: Event = {}
        for what in rng.sample(
            ("email", "phone", "language", "address", "last_name"), rng.randrange(1, 3)
        ):
            if what == "email":
                changes["email"] = people.email(
                    rng.choice(pool.first_names), rng.choice(pool.last_names), pool, rng
                )
            elif what == "phone":
                changes["phone"] = people.phone(country, rng)
            elif what == "language":
                changes["language"] = rng.choice(self.markets.rules[country].languages)
            elif what == "address":
                changes["address"] = {
                    "line1": rng.choice(pool.streets),
                    "city": rng.choice(pool.cities),
                    "postal_code": people.postal_code(country, market, rng),
                    "country": country,
                }
            else:
                changes["last_name"] = rng.choice(pool.last_names)
        if self.consent_rng.random() < CONSENT_CHANGE_SHARE:
            # A partner withdraws marketing consent, or grants it later (never stated: grants).
            granted = not partner.marketing
            today = datetime.fromtimestamp(now, UTC)
            changes["consents"] = {
                "marketing_email": granted,
                "captured_at": _timestamp(now - self.consent_rng.randrange(1, 600)),
                "version": f"{today.year}.{self.consent_rng.randrange(1, 3)}",
            }
            partner.marketing = granted
        payload: Event = {"changes": changes}
        if version == 2:
            payload["changed_by"] = rng.choice(("partner", "support", "system"))
        return payload

    def _partner_terminated(self, partner: Partner, version: int, now: float) -> Event:
        return {
            "reason": self.rng.choice(
                ("voluntary", "voluntary", "inactivity", "compliance", "other")
            ),
            "effective_at": _timestamp(now),
        }

    def _order_placed(self, partner: Partner, version: int, now: float) -> Event:
        rng = self.rng
        total = round(rng.uniform(12, 450), 2)
        payload: Event = {
            "order_id": self._id("O"),
            "order_type": rng.choice(("retail", "retail", "autoship", "autoship", "enrollment")),
            "currency": self.markets.rules[partner.country].currency,
            "total_amount": total,
            "volume_points": round(total * 0.8, 1),
            "line_count": rng.randrange(1, 9),
        }
        if version == 2:
            payload["channel"] = rng.choice(CHANNELS)
        return payload

    def _subscription_changed(self, partner: Partner, version: int, now: float) -> Event:
        rng = self.rng
        action = rng.choices(
            ("modified", "created", "paused", "resumed", "cancelled"), weights=(40, 20, 15, 15, 10)
        )[0]
        payload: Event = {
            "subscription_id": self._id("S"),
            "action": action,
            "plan_sku": rng.choice(PLANS),
        }
        if action != "cancelled":
            payload["next_ship_date"] = (
                datetime.fromtimestamp(now, UTC).date() + timedelta(days=rng.randrange(3, 40))
            ).isoformat()
        return payload

    def _id(self, prefix: str) -> str:
        return prefix + _base32(self.rng.getrandbits(64), 12)


class _FaultInjector:
    """An event made a message: the fault drawn for it injected, with the outcome the contract
    gives it (derived from the fault, never by calling the validator). Draws from the
    simulator's generator."""

    def __init__(
        self, rng: random.Random, markets: Markets, topics: dict[str, str], max_message_bytes: int
    ) -> None:
        self.rng, self.markets, self.topics = rng, markets, topics
        self.max_message_bytes = max_message_bytes
        self._encode = msgspec.json.Encoder().encode

    def message(
        self, event: Event, partner: Partner, fault: str | None
    ) -> tuple[Message, str | None]:
        reasons: list[str] = []
        if fault == "missing":
            reasons = [self._remove_mandatory(event)]
        elif fault == "bad_format":
            reasons = [self._corrupt_format(event)]
        elif fault == "rule_violation":
            reasons = [self._violate_rule(event)]
        elif fault == "unknown_version":
            if self.rng.random() < 0.5:
                event["schema_version"] = self.rng.choice((3, 4, 99))
                reasons = ["unknown_schema_version"]
            else:
                event["event_type"] = self.rng.choice(
                    ("partner.reactivated", "order.returned", "wallet.credited")
                )
                reasons = ["unknown_event_type"]
        elif fault == "oversized":
            event["payload"]["notes"] = "x" * (self.max_message_bytes + 1)
            reasons = ["oversized"]
        value = None
        if fault == "hostile":
            value, reasons, _ = hostile.make(self.rng, event)
        value = value if value is not None else self._encode(event)
        if fault == "poison":
            value, reason = self._poison(value)
            reasons = [reason]
        given_payload = event.get("payload")
        payload: Event = given_payload if isinstance(given_payload, dict) else {}
        given_consents = payload.get("consents")
        consents: Event = given_consents if isinstance(given_consents, dict) else {}
        expected = {
            "key": partner.partner_id,
            "event_id": event.get("event_id") if fault != "poison" else None,
            "event_type": event.get("event_type") if fault != "poison" else None,
            "partner_id": partner.partner_id,
            "region": partner.region,
            "partner_version": partner.version,
            "occurred_at": event.get("occurred_at")
            if isinstance(event.get("occurred_at"), str)
            else None,
            "fault": fault,
            "reasons": sorted(reasons),
            "duplicate_of": None,
            "out_of_order": fault == "out_of_order",
            # What an enrollment states of marketing consent (None: nothing): whether Marketing
            # Cloud may hold the partner.
            "marketing_email": consents.get("marketing_email")
            if isinstance(consents.get("marketing_email"), bool)
            else None,
            "id_readable": fault not in ("poison", "oversized")
            and not {"unparsable", "too_deep"} & set(reasons)
            and isinstance(event.get("event_id"), str)
            and bool(event["event_id"].strip()),
        }
        return Message(
            0, self.topics[partner.region], partner.partner_id.encode(), value, expected
        ), fault

    def _applicable(self, event: Event) -> list[FieldSpec]:
        return list(contract_fields(event["event_type"], event["schema_version"]))

    def required_here(self, spec: FieldSpec, event: Event) -> bool:
        payload = event["payload"]
        country = (
            payload.get("address", {}).get("country")
            if event["event_type"] == "partner.enrolled"
            else None
        )
        return {
            "always": True,
            "never": False,
            "tax_id_market": country in self.markets.tax_id_countries(),
            "state_market": country in self.markets.state_countries(),
            "consent_region": event["region"] in self.markets.consent_regions,
            "without_first_order": "first_order" not in payload,
            "not_cancelled": payload.get("action") not in (None, "cancelled"),
        }[spec.required]

    def _remove_mandatory(self, event: Event) -> str:
        candidates = [
            s
            for s in self._applicable(event)
            if self.required_here(s, event) and _get(event, s.path) is not None
        ]
        spec = self.rng.choice(candidates)
        how = self.rng.random()
        if spec.kind == STRING and how < 0.3:
            _set(event, spec.path, self.rng.choice(("", "  ")))
        elif how < 0.6:
            _set(event, spec.path, None)
        else:
            _delete(event, spec.path)
        return spec.missing_code

    def _corrupt_format(self, event: Event) -> str:
        def candidate(spec: FieldSpec) -> bool:
            value = _get(event, spec.path)
            if value is None or spec.path in ("event_type", "schema_version"):
                return False
            if spec.path == "payload.action" and value == "cancelled":
                return False  # corrupting it would make next_ship_date mandatory too
            return spec.checked_format or self._may_change_type(spec)

        spec = self.rng.choice([s for s in self._applicable(event) if candidate(s)])
        if spec.kind == BOOLEAN:
            _set(event, spec.path, self.rng.choice(("yes", 1)))
        elif spec.kind in ("number", INTEGER):
            _set(
                event,
                spec.path,
                -1 if spec.minimum is not None and self.rng.random() < 0.5 else "12",
            )
            if spec.kind == INTEGER and self.rng.random() < 0.3:
                _set(event, spec.path, 2.5)
        elif not spec.checked_format or (self._may_change_type(spec) and self.rng.random() < 0.3):
            _set(event, spec.path, self.rng.choice((12345, ["a"], {"value": "x"})))
        elif spec.path == "event_id":
            # Unique: no accidental duplicate.
            _set(event, spec.path, f"bad-{self.rng.getrandbits(64):016x}")
        else:
            _set(
                event,
                spec.path,
                self.rng.choice(("#n/a#", f"31/12/{1990 + self.rng.randrange(20)}", "x@")),
            )
        return spec.format_code

    @staticmethod
    def _may_change_type(spec: FieldSpec) -> bool:
        # A field of the wrong JSON type is dropped while parsing; these fields decide whether
        # others are mandatory, so dropping them would add reasons of their own.
        return not (
            spec.path in ("payload.first_order.order_id", "payload.action")
            or spec.path.startswith("payload.changes.")
        )

    def _violate_rule(self, event: Event) -> str:
        payload, region = event["payload"], event["region"]
        choices = ["country_not_in_region", "under_age", "sponsor_is_self"] + (
            ["consent_not_granted:payload.consents.data_processing"]
            if region in self.markets.consent_regions
            else []
        )
        rule = self.rng.choice(choices)
        if rule == "country_not_in_region":
            other = self.rng.choice([r for r in self.markets.countries if r != region])
            payload["address"]["country"] = self.rng.choice(self.markets.countries[other])
        elif rule == "under_age":
            at = date.fromisoformat(event["occurred_at"][:10])
            min_age = self.markets.rules[payload["address"]["country"]].min_age
            payload["date_of_birth"] = date(
                at.year - min_age + 1, at.month, min(at.day, 28)
            ).isoformat()
        elif rule == "sponsor_is_self":
            payload["sponsor_id"] = event["partner_id"]
        else:
            payload["consents"]["data_processing"] = False
        return rule

    def _poison(self, value: bytes) -> tuple[bytes, str]:
        if self.rng.random() < 0.5:
            return (
                b"\xff\xfe" + self.rng.randbytes(self.rng.randrange(4, 64)) + value[:20],
                "not_utf8",
            )
        text = value.decode()
        return text[: self.rng.randrange(0, len(text) - 1)].encode(), "unparsable"


@overload
def _draw(names: list[str], cumulative: list[float], x: float, none_above: None = None) -> str: ...
@overload
def _draw(names: list[str], cumulative: list[float], x: float, none_above: float) -> str | None: ...
def _draw(
    names: list[str], cumulative: list[float], x: float, none_above: float | None = None
) -> str | None:
    """The name whose share of [0, 1) holds ``x``; None at or above ``none_above``."""
    if none_above is not None and x >= none_above:
        return None
    for name, edge in zip(names, cumulative, strict=True):
        if x < edge:
            return name
    return names[-1]


def _base32(bits: int, length: int) -> str:
    """Random-looking ids (never monotonic: Firestore and BigQuery clustering prefer spread
    keys)."""
    return base64.b32encode(bits.to_bytes(8, "big")).decode()[:length]


def _cumulative(values: Iterable[float]) -> list[float]:
    out: list[float] = []
    total = 0.0
    for v in values:
        total += v
        out.append(total)
    return out


def _timestamp(epoch: float) -> str:
    whole = int(epoch)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        + f".{int((epoch - whole) * 1000):03d}Z"
    )


def _parent(event: Event, path: str) -> tuple[object, str]:
    """The object holding ``path``'s last part (None where the path breaks off), and that part."""
    *parents, leaf = path.split(".")
    node: object = event
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None, leaf
    return node, leaf


def _get(event: Event, path: str) -> object:
    parent, leaf = _parent(event, path)
    return parent.get(leaf) if isinstance(parent, dict) else None


def _set(event: Event, path: str, value: object) -> None:
    parent, leaf = _parent(event, path)
    cast(Event, parent)[leaf] = value  # callers set fields whose parent objects exist


def _delete(event: Event, path: str) -> None:
    parent, leaf = _parent(event, path)
    cast(Event, parent).pop(leaf, None)  # callers delete fields whose parent objects exist


_ENCODE_LINE = msgspec.json.Encoder().encode


def expected_line(message: Message, **extra: object) -> bytes:
    """One line of the expected-outcome file."""
    record = {k: v for k, v in message.expected.items() if k != "id_readable"}
    return _ENCODE_LINE(record | extra if extra else record) + b"\n"
