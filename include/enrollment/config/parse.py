"""A configuration file into ``sections``: every section through one builder (types coerced,
unknown keys refused naming the key and the file), the embedded defaults for collections the file
leaves out, and back again (``as_file``: the shape of ``pipeline.yaml``, every default filled in).

``markets_in_force`` is the market registry of the configuration in force: the contracts, the
validator and the simulator read it."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from enrollment.config.markets import LIBRARY, Market, Markets
from enrollment.config.sections import (
    DEFAULT_MARKETING_CONSENT,
    POOLS_REQUIRED,
    WAREHOUSE_POOL,
    Alerts,
    Backlog,
    CanarySettings,
    CeleryWorker,
    ConfigError,
    Datasets,
    LagRules,
    MarketingConsent,
    PipelineConfig,
    Pool,
    ReconciliationSettings,
    Region,
    RetentionSettings,
    SinkSettings,
    SyncSettings,
    WarehouseSettings,
)

DEFAULT_CONFIG = Path(__file__).parent / "pipeline.yaml"


_TOP_LEVEL = {
    "project", "consumer_group", "landing_bucket", "datasets", "solr_core", "marketing_cloud",
    "backlog", "warehouse", "freshness_sla_s", "sinks", "sync", "lag", "alerts", "canary",
    "reconciliation", "retention", "marketing_consent", "pools", "celery_workers", "regions",
    "markets",
}  # fmt: skip


def _coerce(kind: Any, value: Any, where: str) -> Any:
    """``value`` as the annotated ``kind`` (YAML gives ints for floats, lists for tuples)."""
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise TypeError
            number = kind(value)
            if kind is int and number != float(value):
                raise TypeError
            return number
        if kind is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise TypeError
            return str(value)
        if origin is tuple:
            if not isinstance(value, list | tuple):
                raise TypeError
            (item, _) = typing.get_args(kind)
            return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
        if origin is dict and not isinstance(value, dict):
            raise TypeError
        if kind == str | None:
            return None if value is None else _coerce(str, value, where)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}"
        ) from None
    return value


def _build(cls: type[Any], raw: Any, where: str, **fixed: Any) -> Any:
    """A ``cls`` from the mapping ``raw`` (None: every default); ``fixed`` fields are not keys."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in fixed]
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {', '.join(known)}")
    values = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in raw.items()}
    return cls(**fixed, **values)


def _required(raw: Mapping[str, Any], key: str, where: str) -> Any:
    if raw.get(key) in (None, ""):
        raise ConfigError(f"{where}: {key!r} is required")
    return raw[key]


@lru_cache(maxsize=1)
def _embedded_raw() -> dict[str, Any]:
    with open(DEFAULT_CONFIG, encoding="utf-8") as fh:
        raw: dict[str, Any] = yaml.safe_load(fh)
        return raw


def _pools(raw: Mapping[str, Any] | None) -> dict[str, Pool]:
    if raw is None:  # a collection's default: the embedded file's
        raw = _embedded_raw()["pools"]
    pools = {
        str(name): _build(Pool, options, f"pools.{name}", name=str(name))
        for name, options in (raw or {}).items()
    }
    missing = [p for p in POOLS_REQUIRED if p not in pools]
    if missing:
        raise ConfigError(
            f"pools: {missing} missing; the pipeline's tasks run in {list(POOLS_REQUIRED)}"
        )
    if pools[WAREHOUSE_POOL].slots != 1:
        raise ConfigError(
            f"pools: {WAREHOUSE_POOL} has exactly 1 slot (one writer of the warehouse tables)"
        )
    return pools


def _celery_workers(raw: list[Any] | None, pools: dict[str, Pool]) -> tuple[CeleryWorker, ...]:
    if raw is None:
        raw = _embedded_raw()["celery_workers"]
    workers = tuple(
        _build(CeleryWorker, w, f"celery_workers[{i}]") for i, w in enumerate(raw or ())
    )
    names = [w.name for w in workers]
    if len(set(names)) != len(names):
        raise ConfigError(f"celery_workers: names must be unique, got {names}")
    served = {q for w in workers for q in w.queues}
    unserved = sorted({p.queue for p in pools.values()} - served)
    if workers and unserved:
        raise ConfigError(
            f"celery_workers: no worker takes the queue(s) {unserved} that pools send tasks to"
        )
    return workers


def _regions(raw: Any, backlog: Backlog) -> tuple[Region, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("regions: a list of at least one region is required")
    regions = []
    for i, entry in enumerate(raw):
        where = f"regions[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {entry!r}")
        entry = dict(entry)
        code = str(_required(entry, "code", where)).upper()
        countries = entry.get("countries") or []
        if isinstance(countries, list):
            countries = [str(c).upper() for c in countries]
        entry["code"], entry["countries"] = code, countries
        regions.append(_build(Region, dataclasses.asdict(backlog) | entry, f"regions.{code}"))
    codes = [r.code for r in regions]
    if len(set(codes)) != len(codes):
        raise ConfigError(f"regions: codes must be unique, got {codes}")
    return tuple(regions)


def _markets(raw: Any, regions: tuple[Region, ...]) -> Markets:
    """The region registry's markets: every country of a region has rules (the library's or the
    file's ``markets:``) and belongs to one region, or the configuration does not load."""
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"markets: expected a mapping country -> rules, got {raw!r}")
    own = {
        str(c).upper(): _build(Market, rules, f"markets.{c}") for c, rules in (raw or {}).items()
    }
    rules = LIBRARY | own
    seen: dict[str, str] = {}
    for region in regions:
        for country in region.countries:
            if country in seen:
                raise ConfigError(
                    f"regions: {country} is in both {seen[country]} and {region.code}; a country "
                    "sells in one region"
                )
            seen[country] = region.code
    missing = {r.code: [c for c in r.countries if c not in rules] for r in regions}
    missing = {code: cs for code, cs in missing.items() if cs}
    if missing:
        named = "; ".join(f"{code}: {', '.join(cs)}" for code, cs in missing.items())
        raise ConfigError(
            f"regions: no market rules for {named}. Add each under `markets:` (currency, "
            "postal_code, tax_id, state_required, min_age, languages), see docs/configuration.md, "
            "'Adding a region'"
        )
    return Markets(
        countries={r.code: r.countries for r in regions},
        rules={c: rules[c] for c in seen},
        consent_regions=tuple(r.code for r in regions if r.consent_required),
    )


def _marketing_consent(raw: Any, regions: tuple[Region, ...]) -> MarketingConsent:
    codes = [r.code for r in regions]
    required = tuple(r.code for r in regions if r.consent_required)
    if raw is None:
        return MarketingConsent(required=required)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"marketing_consent: expected a mapping, got {raw!r}")
    unknown = sorted(set(raw) - {"default", "regions"})
    if unknown:
        raise ConfigError(f"marketing_consent: unknown key(s) {unknown}; known: default, regions")
    chosen = {str(k).upper(): v for k, v in (raw.get("regions") or {}).items()}
    strangers = sorted(set(chosen) - set(codes))
    if strangers:
        raise ConfigError(
            f"marketing_consent: unknown region(s) {strangers}; configured regions: "
            f"{', '.join(codes)}"
        )
    return MarketingConsent(
        default=raw.get("default", DEFAULT_MARKETING_CONSENT), regions=chosen, required=required
    )


def parse_config(
    raw: Mapping[str, Any], source: str | os.PathLike[str] = "<config>"
) -> PipelineConfig:
    """The typed configuration of ``raw`` (a loaded YAML file, named ``source`` in errors)."""
    try:
        return _parse(raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _parse(raw: Mapping[str, Any]) -> PipelineConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError("expected a mapping of sections")
    unknown = sorted(str(k) for k in raw if k not in _TOP_LEVEL)
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; known: {', '.join(sorted(_TOP_LEVEL))}")
    datasets = _build(Datasets, _required(raw, "datasets", "config"), "datasets")
    marketing_cloud = _required(raw, "marketing_cloud", "config")
    if not isinstance(marketing_cloud, Mapping) or set(marketing_cloud) != {"data_extension"}:
        raise ConfigError(
            f"marketing_cloud: expected {{data_extension: <name>}}, got {marketing_cloud!r}"
        )
    backlog = _build(Backlog, raw.get("backlog"), "backlog")
    regions = _regions(raw.get("regions"), backlog)
    sinks = raw.get("sinks") or {}
    if not isinstance(sinks, Mapping):
        raise ConfigError(f"sinks: expected a mapping name -> entry, got {sinks!r}")
    sync = _build(SyncSettings, raw.get("sync"), "sync")
    alerts = _build(Alerts, raw.get("alerts"), "alerts")
    pools = _pools(raw.get("pools"))
    return PipelineConfig(
        project=str(_required(raw, "project", "config")),
        consumer_group=str(_required(raw, "consumer_group", "config")),
        landing_bucket=str(_required(raw, "landing_bucket", "config")),
        warehouse_dataset=datasets.warehouse,
        ops_dataset=datasets.ops,
        solr_core=str(_required(raw, "solr_core", "config")),
        marketing_cloud_data_extension=str(marketing_cloud["data_extension"]),
        regions=regions,
        markets=_markets(raw.get("markets"), regions),
        sinks={str(name): _sink(str(name), entry) for name, entry in sinks.items()},
        sync_max_batches=sync.max_batches,
        sync_catch_up_every=sync.catch_up_every,
        freshness_sla_s=_coerce(
            float, raw.get("freshness_sla_s", PipelineConfig.freshness_sla_s), "freshness_sla_s"
        ),
        lag=_build(LagRules, raw.get("lag"), "lag"),
        alert_callback=alerts.on_failure,
        canary=_build(CanarySettings, raw.get("canary"), "canary"),
        reconciliation=_build(ReconciliationSettings, raw.get("reconciliation"), "reconciliation"),
        warehouse=_build(WarehouseSettings, raw.get("warehouse"), "warehouse"),
        sync_lookback_days=sync.lookback_days,
        sync_train_s=sync.train_s,
        sync_linger_s=sync.linger_s,
        sync_poll_s=sync.poll_s,
        retention=_build(RetentionSettings, raw.get("retention"), "retention"),
        marketing_consent=_marketing_consent(raw.get("marketing_consent"), regions),
        pools=pools,
        celery_workers=_celery_workers(raw.get("celery_workers"), pools),
    )


def _sink(name: str, entry: Any) -> SinkSettings:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"sinks.{name}: expected a mapping with a 'module', got {entry!r}")
    options = {str(k): v for k, v in entry.items() if k not in ("module", "needs")}
    return SinkSettings(
        name=name,
        module=str(entry.get("module") or ""),
        needs=_coerce(tuple[str, ...], entry.get("needs") or [], f"sinks.{name}.needs"),
        options=options,
    )


@lru_cache(maxsize=4)
def _load(path: str) -> PipelineConfig:
    with open(path, encoding="utf-8") as fh:
        return parse_config(yaml.safe_load(fh), source=path)


def load_config(path: str | os.PathLike[str] | None = None) -> PipelineConfig:
    return _load(str(path or os.environ.get("ENROLLMENT_CONFIG") or DEFAULT_CONFIG))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def as_file(config: PipelineConfig) -> dict[str, Any]:
    """``config`` in the shape of ``pipeline.yaml``, every default filled in (it loads again)."""
    return {
        "project": config.project,
        "consumer_group": config.consumer_group,
        "landing_bucket": config.landing_bucket,
        "datasets": {"warehouse": config.warehouse_dataset, "ops": config.ops_dataset},
        "solr_core": config.solr_core,
        "marketing_cloud": {"data_extension": config.marketing_cloud_data_extension},
        "warehouse": _plain(config.warehouse),
        "freshness_sla_s": config.freshness_sla_s,
        "sinks": {name: dict(_plain(sink._entry())) for name, sink in config.sinks.items()},
        "sync": {
            "max_batches": config.sync_max_batches,
            "catch_up_every": config.sync_catch_up_every,
            "lookback_days": config.sync_lookback_days,
            "train_s": config.sync_train_s,
            "linger_s": config.sync_linger_s,
            "poll_s": config.sync_poll_s,
        },
        "lag": _plain(config.lag),
        "alerts": {"on_failure": config.alert_callback},
        "canary": _plain(config.canary),
        "reconciliation": _plain(config.reconciliation),
        "retention": _plain(config.retention),
        "marketing_consent": {
            "default": config.marketing_consent.default,
            "regions": dict(config.marketing_consent.regions),
        },
        "pools": {
            n: {k: v for k, v in _plain(p).items() if k != "name"} for n, p in config.pools.items()
        },
        "celery_workers": [_plain(w) for w in config.celery_workers],
        "regions": [_plain(r) for r in config.regions],
        "markets": {c: _plain(m) for c, m in config.markets.rules.items()},
    }


def markets_in_force() -> Markets:
    """The markets of the configuration in force (``ENROLLMENT_CONFIG`` or the embedded one)."""

    return load_config().markets
