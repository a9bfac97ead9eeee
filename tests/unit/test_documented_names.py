"""Every name users were told to import keeps working: the paths the docs name today resolve
(without a deprecation warning), and every path from before the relayout into stage packages
still imports, warns ``MovedWarning`` naming the new path, and gives the very same object."""

from __future__ import annotations

import importlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from enrollment import _moved
from enrollment._moved import MODULES, MOVED, MovedWarning

ROOT = Path(__file__).resolve().parents[2]
# The docs, and the configuration files users copy (their sinks' `module:` paths).
DOCS = sorted(
    doc
    for doc in [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        *(ROOT / "docs").rglob("*.md"),
        *(ROOT / "include/enrollment/config").glob("*.yaml"),
    ]
    if doc.exists()
)
# The docs also name BigQuery tables and views (`enrollment.partners`, `enrollment.events.region`):
# a dataset, not a module. The interface snapshot knows them all.
_SNAPSHOT = (ROOT / "tests/snapshot/tables.json").read_text()
TABLES = {name.split()[0] for name in json.loads(_SNAPSHOT)["schemas"]} | set(
    re.findall(r"enrollment\.(\w+)`", _SNAPSHOT)
)
# Where the docs name the old paths on purpose (to say they moved).
ABOUT_OLD_PATHS = re.compile(r"old paths|deprecat|moved", re.IGNORECASE)


def _documented() -> list[tuple[str, str]]:
    """(doc, dotted path) for every `enrollment.…` in backticks and every import in the docs."""
    found: set[tuple[str, str]] = set()
    for doc in DOCS:
        name = str(doc.relative_to(ROOT))
        for line in doc.read_text().splitlines():
            if ABOUT_OLD_PATHS.search(line):
                continue
            for path in re.findall(r"(?:`|module: )(enrollment\.[A-Za-z_][\w.]*)", line):
                found.add((name, path.rstrip(".")))
            imported = re.match(r"\s*from (enrollment[\w.]*) import ([\w, ]+)", line)
            if imported:
                for item in imported.group(2).split(","):
                    if item.strip():
                        found.add((name, f"{imported.group(1)}.{item.strip()}"))
    return sorted((doc, path) for doc, path in found if path.split(".")[1] not in TABLES)


def _resolve(path: str) -> Any:
    """A module, or an attribute of the longest module prefix of ``path``."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(path)


DOCUMENTED = _documented()


def test_the_docs_name_library_paths():
    assert len(DOCUMENTED) >= 10, DOCUMENTED  # the scan found what the docs name


@pytest.mark.parametrize(("doc", "path"), DOCUMENTED, ids=[f"{d}:{p}" for d, p in DOCUMENTED])
def test_a_documented_path_resolves_at_its_new_place(doc, path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MovedWarning)
        assert _resolve(path) is not None, f"{doc} names {path}"


OLD_NAMES = sorted((old, name) for old, names in MOVED.items() for name in names)


@pytest.mark.parametrize(("old", "name"), OLD_NAMES, ids=[f"{o}.{n}" for o, n in OLD_NAMES])
def test_an_old_path_warns_and_gives_the_same_object(old, name):
    module, _, new_name = MOVED[old][name].partition(":")
    with pytest.warns(MovedWarning, match=re.escape(f"{old}.{name} moved to ")):
        got = getattr(importlib.import_module(old), name)
    if module == _moved.__name__:  # the split class: a compatible subclass of the handle
        from enrollment.clients.bigquery import BigQuery

        assert issubclass(got, BigQuery) and hasattr(got, "merge_batch")
        return
    assert got is getattr(importlib.import_module(module), new_name or name)


@pytest.mark.parametrize("old", sorted(MODULES))
def test_an_old_module_imported_whole_answers_for_its_new_one(old):
    new = importlib.import_module(MODULES[old])
    public = [n for n in vars(new) if not n.startswith("_")]
    assert public, MODULES[old]
    with pytest.warns(MovedWarning):
        shim = importlib.import_module(old)
        assert getattr(shim, public[0]) is getattr(new, public[0])


def test_an_unknown_old_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        importlib.import_module("enrollment.batches").no_such_name  # noqa: B018


def test_the_documented_gate_error_is_the_one_the_library_raises():
    from enrollment.core.errors import GateError

    with pytest.warns(MovedWarning, match="enrollment.core.errors.GateError"):
        from enrollment.batches import GateError as old  # type: ignore[attr-defined]
    assert old is GateError
