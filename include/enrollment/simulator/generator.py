"""The four regions' SAP Commerce systems, simulated: partners enroll under sponsors (a genealogy
that grows by preferential attachment, as MLM downlines do), then order, change subscriptions,
update their profiles and sometimes leave. Deterministic for a seed.

Each message comes with its **expected outcome**: valid, or quarantined with the exact reason
codes the contract gives it, derived from the fault the simulator injected (never by calling the
validator). Reasons are those of a batch holding the whole run; ``duplicate_of`` says which
earlier message a duplicate repeats, so a consumer cutting other batches can adjust.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, overload

import msgspec

from enrollment._moved import forward
from enrollment.config import PipelineConfig, load_config
from enrollment.contracts.spec import FieldSpec
from enrollment.ingest.validation.trees import DEFAULT_MAX_MESSAGE_BYTES
from enrollment.simulator import people
from enrollment.simulator.faults import FaultInjector, FaultRates, Message
from enrollment.simulator.payloads import Event, Partner, Payloads, base32, timestamp

EVENT_MIX = {
    "order.placed": 0.55,
    "subscription.changed": 0.25,
    "partner.updated": 0.10,
    "partner.enrolled": 0.07,
    "partner.terminated": 0.03,
}


DEFAULT_START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


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
        self.pools = people.build_pools(tuple(self.markets.rules.items()))
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
        self._payloads = Payloads(
            self.rng, self.consent_rng, self.markets, self.pools, self.sponsor_slots
        )
        self._injector = FaultInjector(self.rng, self.markets, self.topics, max_message_bytes)

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
            "occurred_at": timestamp(now),
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
            "occurred_at": timestamp(now),
            "partner_id": partner.partner_id,
            "partner_version": partner.version,
        }
        event["payload"] = self._payloads.of(event_type, partner, version, now) | payload_overrides
        return event

    def _new_partner(self, region: str) -> Partner:
        while True:
            pid = self.prefix[region] + base32(self.rng.getrandbits(64), 10)
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


def _cumulative(values: Iterable[float]) -> list[float]:
    out: list[float] = []
    total = 0.0
    for v in values:
        total += v
        out.append(total)
    return out


_ENCODE_LINE = msgspec.json.Encoder().encode


def expected_line(message: Message, **extra: object) -> bytes:
    """One line of the expected-outcome file."""
    record = {k: v for k, v in message.expected.items() if k != "id_readable"}
    return _ENCODE_LINE(record | extra if extra else record) + b"\n"


__getattr__ = forward(__name__)  # FaultRates and the payloads' names lived here before
