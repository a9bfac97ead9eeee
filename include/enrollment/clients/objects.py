"""Parquet objects in Cloud Storage: written once (a batch's objects are a function of its offset
range, so a retry finds them there), read and written by ``gs://`` URI."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import google.cloud.storage as gcs
    from google.cloud.storage import Blob, Bucket


def write_once(bucket: Bucket, name: str, table: pa.Table) -> bool:
    """Writes a Parquet object unless it exists; True when this call wrote it.

    A retried task finds the object there and leaves it: the content is a function of the offset
    range, so what is there is what would be written. Objects stay under 8 MB per part so the
    emulator honours the precondition (it ignores it on resumable uploads)."""
    from google.api_core.exceptions import PreconditionFailed

    blob = bucket.blob(name)
    if blob.exists():
        return False
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    blob.metadata = {"rows": str(table.num_rows)}
    try:
        blob.upload_from_string(
            sink.getvalue(), content_type="application/vnd.apache.parquet", if_generation_match=0
        )
    except PreconditionFailed:
        return False
    return True


def blob(storage: gcs.Client, uri: str) -> gcs.Blob:
    bucket, name = uri.removeprefix("gs://").split("/", 1)
    return storage.bucket(bucket).blob(name)


def read_parquet(storage: gcs.Client, uri: str) -> pa.Table:
    return pq.read_table(io.BytesIO(blob(storage, uri).download_as_bytes()))


def write_parquet(storage: gcs.Client, uri: str, table: pa.Table) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    blob(storage, uri).upload_from_string(
        sink.getvalue(), content_type="application/vnd.apache.parquet"
    )


def rewrite_parquet(blob: Blob, transform: Callable[[pa.Table], tuple[pa.Table, int]]) -> int:
    """Rewrites a Parquet object through ``transform(table) -> (table, changed rows)``, only when
    rows changed; guarded by its generation (a concurrent writer makes this fail, and the caller
    runs again). 0 when the object does not exist."""
    from google.api_core.exceptions import NotFound

    try:
        blob.reload()
        table = pq.read_table(
            io.BytesIO(blob.download_as_bytes(if_generation_match=blob.generation))
        )
    except NotFound:
        return 0
    table, changed = transform(table)
    if changed:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        blob.upload_from_string(
            buffer.getvalue(),
            content_type="application/vnd.apache.parquet",
            if_generation_match=blob.generation,
        )
    return changed
