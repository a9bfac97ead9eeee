"""What differs by region and market, written down as data.

The validator, the published JSON Schemas and the simulator all read these tables; no rule
about a market lives anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Market:
    """One country's enrollment rules."""

    currency: str
    postal_code: str  # RE2 pattern of the country's postal codes
    tax_id: str | None = None  # a tax identifier is mandatory where a pattern is given
    state_required: bool = False  # schema v2: address.state mandatory
    min_age: int = 18
    languages: tuple[str, ...] = field(default=())


# The market rules of every country the project knows (a deployment adds or overrides countries
# under `markets:` in its configuration; which region sells where is the configuration's
# `regions:`).
LIBRARY: dict[str, Market] = {
    "US": Market(
        "USD",
        r"^\d{5}(-\d{4})?$",
        tax_id=r"^\d{3}-?\d{2}-?\d{4}$",
        state_required=True,
        languages=("en-US", "es-US"),
    ),
    "CA": Market(
        "CAD", r"^[A-Z]\d[A-Z] ?\d[A-Z]\d$", state_required=True, languages=("en-CA", "fr-CA")
    ),
    "DE": Market("EUR", r"^\d{5}$", languages=("de-DE",)),
    "FR": Market("EUR", r"^\d{5}$", languages=("fr-FR",)),
    "GB": Market("GBP", r"^[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}$", languages=("en-GB",)),
    "ES": Market("EUR", r"^\d{5}$", languages=("es-ES",)),
    "IT": Market("EUR", r"^\d{5}$", languages=("it-IT",)),
    "NL": Market("EUR", r"^\d{4} ?[A-Z]{2}$", languages=("nl-NL",)),
    "PL": Market("PLN", r"^\d{2}-\d{3}$", languages=("pl-PL",)),
    "SE": Market("SEK", r"^\d{3} ?\d{2}$", languages=("sv-SE",)),
    "ZA": Market("ZAR", r"^\d{4}$", languages=("en-ZA",)),
    "JP": Market("JPY", r"^\d{3}-?\d{4}$", min_age=20, languages=("ja-JP",)),
    "KR": Market("KRW", r"^\d{5}$", tax_id=r"^\d{6}-?\d{7}$", min_age=19, languages=("ko-KR",)),
    "AU": Market("AUD", r"^\d{4}$", state_required=True, languages=("en-AU",)),
    "NZ": Market("NZD", r"^\d{4}$", languages=("en-NZ",)),
    "SG": Market("SGD", r"^\d{6}$", languages=("en-SG",)),
    "PH": Market("PHP", r"^\d{4}$", languages=("en-PH", "fil-PH")),
    "MY": Market("MYR", r"^\d{5}$", languages=("en-MY", "ms-MY")),
    "TW": Market("TWD", r"^\d{3}(\d{2,3})?$", languages=("zh-TW",)),
    "MX": Market(
        "MXN",
        r"^\d{5}$",
        tax_id=r"^[A-Z&Ñ]{3,4}\d{6}[A-Z\d]{3}$",
        state_required=True,
        languages=("es-MX",),
    ),
    "BR": Market(
        "BRL",
        r"^\d{5}-?\d{3}$",
        tax_id=r"^\d{3}\.?\d{3}\.?\d{3}-?\d{2}$",
        state_required=True,
        languages=("pt-BR",),
    ),
    "CO": Market("COP", r"^\d{6}$", tax_id=r"^\d{6,10}$", languages=("es-CO",)),
    "AR": Market(
        "ARS", r"^([A-Z]\d{4}[A-Z]{3}|\d{4})$", tax_id=r"^\d{2}-?\d{8}-?\d$", languages=("es-AR",)
    ),
    "CL": Market("CLP", r"^\d{7}$", tax_id=r"^\d{7,8}-[\dK]$", languages=("es-CL",)),
    "PE": Market("PEN", r"^\d{5}$", languages=("es-PE",)),
}


@dataclass(frozen=True, eq=False)  # identity: one per loaded configuration, a cache key
class Markets:
    """The region registry's market side: the countries each configured region sells in and the
    rules of each of those countries (``PipelineConfig.markets``, built when the configuration
    loads). The validator, the JSON Schemas, the simulator and the canary read it."""

    countries: dict[str, tuple[str, ...]]  # region code -> its countries (ISO 3166-1 alpha-2)
    rules: dict[str, Market]  # country -> its market rules
    # GDPR and its neighbours: explicit data-processing consent (granted) and a recorded choice
    # on marketing e-mail are mandatory for an enrollment in these regions.
    consent_regions: tuple[str, ...] = ()

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self.countries)

    def country_region(self, country: str) -> str | None:
        for region, countries in self.countries.items():
            if country in countries:
                return region
        return None

    def tax_id_countries(self) -> tuple[str, ...]:
        return tuple(c for c, m in self.rules.items() if m.tax_id)

    def state_countries(self) -> tuple[str, ...]:
        return tuple(c for c, m in self.rules.items() if m.state_required)

    def pairs(self) -> list[str]:
        """``REGION|COUNTRY`` of every market, sorted: a row's country is a market of its region."""
        return sorted(f"{r}|{c}" for r, cs in self.countries.items() for c in cs)
