"""In-memory stand-ins for the two clients the pure logic is handed (Cloud Storage, BigQuery): no
service, no network. They keep what was written and what was asked, so a test asserts on the
objects left behind and on the SQL text and parameters sent; they answer queries from a function
the test gives."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.api_core.exceptions import NotFound, PreconditionFailed


class FakeBlob:
    def __init__(self, bucket: FakeBucket, name: str):
        self.bucket, self.name = bucket, name
        self.metadata: dict | None = None

    @property
    def _stored(self) -> dict | None:
        return self.bucket.objects.get(self.name)

    @property
    def size(self) -> int | None:
        return len(self._stored["data"]) if self._stored else None

    @property
    def time_created(self) -> datetime | None:
        return self._stored["created"] if self._stored else None

    @property
    def generation(self) -> int | None:
        return self._stored["generation"] if self._stored else None

    def exists(self) -> bool:
        return self._stored is not None

    def reload(self) -> None:
        if self._stored is None:
            raise NotFound(self.name)

    def download_as_bytes(
        self, start: int | None = None, if_generation_match: int | None = None
    ) -> bytes:
        if self._stored is None:
            raise NotFound(self.name)
        if if_generation_match is not None and if_generation_match != self.generation:
            raise PreconditionFailed(self.name)
        self.bucket.reads.append(self.name)
        return self._stored["data"][start or 0 :]

    def download_as_text(self, if_generation_match: int | None = None) -> str:
        return self.download_as_bytes(if_generation_match=if_generation_match).decode()

    def upload_from_string(self, data, content_type=None, if_generation_match=None) -> None:
        # As Cloud Storage: 0 means "only if absent", any other number "only if still that one".
        current = self._stored["generation"] if self._stored else 0
        if if_generation_match is not None and if_generation_match != current:
            raise PreconditionFailed(self.name)
        self.bucket.put(self.name, data)

    def delete(self) -> None:
        if self.bucket.objects.pop(self.name, None) is None:
            raise NotFound(self.name)


class FakeBucket:
    def __init__(self, name: str = "landing", now: datetime | None = None):
        self.name = name
        self.objects: dict[str, dict] = {}
        self.now = now or datetime(2026, 11, 20, 12, tzinfo=UTC)
        self.generations = 0  # as GCS: each write of an object a new generation
        self.reads: list[str] = []  # the objects downloaded, in order

    def put(self, name: str, data, created: datetime | None = None) -> None:
        data = data.encode() if isinstance(data, str) else bytes(data)
        self.generations += 1
        self.objects[name] = {
            "data": data,
            "created": created or self.now,
            "generation": self.generations,
        }

    def put_json(self, name: str, body: dict, created: datetime | None = None) -> None:
        self.put(name, json.dumps(body), created)

    def json(self, name: str) -> dict:
        return json.loads(self.objects[name]["data"])

    def blob(self, name: str) -> FakeBlob:
        return FakeBlob(self, name)

    def list_blobs(self, prefix: str = "") -> list[FakeBlob]:
        return [FakeBlob(self, n) for n in sorted(self.objects) if n.startswith(prefix)]


class FakeStorage:
    def __init__(self, *buckets: FakeBucket):
        self.buckets = {b.name: b for b in buckets}

    def bucket(self, name: str) -> FakeBucket:
        return self.buckets.setdefault(name, FakeBucket(name))


@dataclass
class Query:
    sql: str
    params: dict[str, Any]

    @property
    def flat(self) -> str:
        """The SQL on one line, runs of whitespace as one space."""
        return " ".join(self.sql.split())


@dataclass
class _Field:
    name: str


@dataclass
class _Listed:
    table_id: str


@dataclass
class _Table:
    schema: list[_Field]


class _Job:
    job_id = "job-1"

    def __init__(self, rows: list):
        self.rows = rows

    def result(self, timeout: float | None = None) -> list:
        return self.rows

    def cancel(self) -> None:
        pass


@dataclass
class FakeBigQuery:
    """Records every query with its parameters (name -> value) and answers with ``answer(sql,
    params)`` (no rows by default). ``tables``: table id -> column names, for ``get_table``."""

    answer: Callable[[str, dict[str, Any]], list[dict]] = lambda sql, params: []
    tables: dict[str, list[str]] = field(default_factory=dict)
    queries: list[Query] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    loads: list[tuple[str, list[str]]] = field(default_factory=list)

    def query(self, sql: str, job_config=None) -> _Job:
        params = {
            p.name: getattr(p, "value", getattr(p, "values", None))
            for p in (job_config.query_parameters if job_config is not None else [])
        }
        self.queries.append(Query(sql, params))
        return _Job(self.answer(sql, params))

    def get_table(self, table_id: str) -> _Table:
        table_id = str(table_id).strip("`")
        if table_id not in self.tables:
            raise NotFound(table_id)
        return _Table([_Field(c) for c in self.tables[table_id]])

    def list_tables(self, dataset: str) -> list[_Listed]:
        return [_Listed(t.rsplit(".", 1)[1]) for t in self.tables if t.rsplit(".", 1)[0] == dataset]

    def delete_table(self, table_id, not_found_ok: bool = False) -> None:
        self.deleted.append(str(table_id).strip("`"))

    def create_table(self, table) -> None:
        self.tables[table.table_id if hasattr(table, "table_id") else str(table)] = [
            f.name for f in getattr(table, "schema", [])
        ]

    def load_table_from_uri(self, uris, table_id, job_config=None) -> _Job:
        self.loads.append((str(table_id), list(uris)))
        return _Job([])

    def matching(self, pattern: str) -> list[Query]:
        """The queries whose one-line SQL matches ``pattern`` (a regular expression)."""
        return [q for q in self.queries if re.search(pattern, q.flat)]
