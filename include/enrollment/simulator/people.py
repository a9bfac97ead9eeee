"""Realistic people per market: names, streets and cities from Faker's locale, and identifiers
(postal codes, tax ids, phones) that follow each market's own format.

Faker is slow per call, so each market gets a pool drawn once from a seeded Faker; events then
combine pool entries with the simulator's own seeded random generator.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from enrollment.config import Market

# Faker locale per market (Faker has none for a few: the nearest one stands in).
LOCALES = {
    "US": "en_US",
    "CA": "en_CA",
    "DE": "de_DE",
    "FR": "fr_FR",
    "GB": "en_GB",
    "ES": "es_ES",
    "IT": "it_IT",
    "NL": "nl_NL",
    "PL": "pl_PL",
    "SE": "sv_SE",
    "ZA": "en_GB",
    "JP": "ja_JP",
    "KR": "ko_KR",
    "AU": "en_AU",
    "NZ": "en_NZ",
    "SG": "en_GB",
    "PH": "en_PH",
    "MY": "en_US",
    "TW": "zh_TW",
    "MX": "es_MX",
    "BR": "pt_BR",
    "CO": "es_CO",
    "AR": "es_AR",
    "CL": "es_CL",
    "PE": "es_CO",
}
# Templates: '#' a digit, '@' an upper-case letter, anything else as is.
POSTAL_TEMPLATES = {
    "US": "#####",
    "CA": "@#@ #@#",
    "DE": "#####",
    "FR": "#####",
    "GB": "@@# #@@",
    "ES": "#####",
    "IT": "#####",
    "NL": "#### @@",
    "PL": "##-###",
    "SE": "### ##",
    "ZA": "####",
    "JP": "###-####",
    "KR": "#####",
    "AU": "####",
    "NZ": "####",
    "SG": "######",
    "PH": "####",
    "MY": "#####",
    "TW": "###",
    "MX": "#####",
    "BR": "#####-###",
    "CO": "######",
    "AR": "####",
    "CL": "#######",
    "PE": "#####",
}
TAX_ID_TEMPLATES = {
    "US": "###-##-####",
    "KR": "######-#######",
    "MX": "@@@@######@@@",
    "BR": "###.###.###-##",
    "CO": "##########",
    "AR": "##-########-#",
    "CL": "########-#",
}
STATES = {
    "US": ("CA", "TX", "NY", "FL", "WA", "UT"),
    "CA": ("ON", "QC", "BC", "AB"),
    "AU": ("NSW", "VIC", "QLD", "WA"),
    "MX": ("CMX", "JAL", "NLE", "PUE"),
    "BR": ("SP", "RJ", "MG", "RS"),
}
CALLING_CODES = {
    "US": "1",
    "CA": "1",
    "DE": "49",
    "FR": "33",
    "GB": "44",
    "ES": "34",
    "IT": "39",
    "NL": "31",
    "PL": "48",
    "SE": "46",
    "ZA": "27",
    "JP": "81",
    "KR": "82",
    "AU": "61",
    "NZ": "64",
    "SG": "65",
    "PH": "63",
    "MY": "60",
    "TW": "886",
    "MX": "52",
    "BR": "55",
    "CO": "57",
    "AR": "54",
    "CL": "56",
    "PE": "51",
}
POOL_SIZE = 200


def fill(template: str, rng: random.Random) -> str:
    return "".join(
        str(rng.randrange(10)) if ch == "#" else chr(65 + rng.randrange(26)) if ch == "@" else ch
        for ch in template
    )


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "", folded)


@dataclass
class Pool:
    first_names: list[str]
    last_names: list[str]
    cities: list[str]
    streets: list[str]
    mail_domains: list[str]


@lru_cache(maxsize=8)
def build_pools(markets: tuple[tuple[str, Market], ...]) -> dict[str, Pool]:
    """Read-only pools per country, one vocabulary for every seed (a seed's stream draws its people
    from them): Faker takes ~1.7 s to build them, which a pool per seed paid for every simulator —
    minutes of a test session. A country without a locale of its own here takes its market's first
    language's, if Faker has it, else en_US."""
    from faker import Faker
    from faker.config import AVAILABLE_LOCALES

    pools: dict[str, Pool] = {}
    countries = sorted(country for country, _ in markets)
    for country, market in markets:
        spoken = [lang.replace("-", "_") for lang in market.languages]
        locale = LOCALES.get(country) or next(
            (lang for lang in spoken if lang in AVAILABLE_LOCALES), "en_US"
        )
        fake = Faker(locale)
        fake.seed_instance(countries.index(country))
        pools[country] = Pool(
            first_names=[fake.first_name() for _ in range(POOL_SIZE)],
            last_names=[fake.last_name() for _ in range(POOL_SIZE)],
            cities=[fake.city() for _ in range(POOL_SIZE // 4)],
            streets=[fake.street_address().replace("\n", " ") for _ in range(POOL_SIZE)],
            mail_domains=sorted({fake.free_email_domain() for _ in range(20)}),
        )
    return pools


def email(first: str, last: str, pool: Pool, rng: random.Random) -> str:
    local = f"{_ascii(first)[:12]}.{_ascii(last)[:12]}".strip(".") or "partner"
    return f"{local}{rng.randrange(1000)}@{rng.choice(pool.mail_domains)}"


def phone(country: str, rng: random.Random) -> str:
    # A country configured beyond these tables gets a calling code of 9 (valid E.164 shape).
    return f"+{CALLING_CODES.get(country, '9')}{rng.randrange(100_000_000, 999_999_999)}"


def postal_code(country: str, market: Market, rng: random.Random) -> str:
    """A postal code of the country: its template, else one drawn from its market's pattern."""
    template = POSTAL_TEMPLATES.get(country)
    return fill(template, rng) if template else _matching(market.postal_code, rng)


def tax_id(country: str, market: Market, rng: random.Random) -> str:
    """A tax id of the country: its template, else one drawn from its market's pattern."""
    template = TAX_ID_TEMPLATES.get(country)
    if template:
        return fill(template, rng)
    if not market.tax_id:
        raise ValueError(f"{country}: no tax id template, and its market asks for no tax id")
    return _matching(market.tax_id, rng)


def state(country: str, rng: random.Random) -> str:
    return rng.choice(STATES[country]) if country in STATES else fill("@@", rng)


def _matching(pattern: str, rng: random.Random) -> str:
    import rstr

    return str(rstr.Rstr(rng).xeger(pattern))
