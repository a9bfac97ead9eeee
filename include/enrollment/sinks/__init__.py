"""Downstream sinks. Each is one module with a ``build(options, endpoints) -> Sink`` function,
named in ``pipeline.yaml`` under ``sinks:`` (see docs/guide.md)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .base import Sink, SinkResult

if TYPE_CHECKING:
    from enrollment.clients.services import Endpoints

__all__ = ["Sink", "SinkResult", "build_sink"]


def build_sink(name: str, options: Mapping[str, Any], endpoints: Endpoints) -> Sink:
    """The configured sink ``name``: ``options["module"]``'s ``build`` with the other options."""
    module_name = options.get("module")
    if not module_name:
        raise ValueError(
            f"sink {name!r}: its config entry needs a 'module' (e.g. enrollment.sinks.{name})"
        )
    module = importlib.import_module(module_name)
    if not hasattr(module, "build"):
        raise ValueError(
            f"sink {name!r}: module {module_name} has no build(options, endpoints) function"
        )
    sink: Sink = module.build({k: v for k, v in options.items() if k != "module"}, endpoints)
    sink.name = name
    return sink
