"""What each simulated event type says: enrollments, profile updates, orders, subscription
changes and terminations, drawn from the seed's generators in a fixed order, in the regions'
markets (names, addresses, postal codes and tax ids of each country's own shape)."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from enrollment.config import Markets
from enrollment.contracts.spec import CHANNELS
from enrollment.simulator import people

# An event as sent (a JSON object), or a part of one.
Event = dict[str, Any]


@dataclass(slots=True)
class Partner:
    partner_id: str
    region: str
    country: str
    version: int = 0
    active: bool = True
    marketing: bool | None = None  # the marketing e-mail consent last stated (None: never)


# Of partner.updated events: a marketing-consent change besides the other changes.
CONSENT_CHANGE_SHARE = 0.1


KITS = ("KIT-STARTER", "KIT-BUSINESS", "KIT-PREMIUM")


PLANS = ("PLAN-NUTRITION-30", "PLAN-SKINCARE-60", "PLAN-WELLNESS-30", "PLAN-FAMILY-90")


class Payloads:
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
            "accepted_at": timestamp(now - rng.randrange(5, 600)),
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
                "captured_at": timestamp(now - self.consent_rng.randrange(1, 600)),
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
            "effective_at": timestamp(now),
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
        return prefix + base32(self.rng.getrandbits(64), 12)


def base32(bits: int, length: int) -> str:
    """Random-looking ids (never monotonic: Firestore and BigQuery clustering prefer spread
    keys)."""
    return base64.b32encode(bits.to_bytes(8, "big")).decode()[:length]


def timestamp(epoch: float) -> str:
    whole = int(epoch)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        + f".{int((epoch - whole) * 1000):03d}Z"
    )
