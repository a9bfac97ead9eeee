"""BigQuery: load Parquet from gs:// (fake-gcs-server's files) and query the rows back."""

import io
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.cloud import bigquery

from enrollment.clients.services import bigquery_client, storage_client

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


def test_load_parquet_from_gcs_and_query_it_back(stack, pipeline_config):
    run = uuid.uuid4().hex[:8]
    table = pa.table(
        {
            "partner_id": [f"P{i:04d}" for i in range(100)],
            "region": ["EMEA", "AMER"] * 50,
            "version": list(range(100)),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    blob = (
        storage_client(stack.project)
        .bucket(pipeline_config.landing_bucket)
        .blob(f"test/{run}/rows.parquet")
    )
    blob.upload_from_string(sink.getvalue(), content_type="application/octet-stream")

    client = bigquery_client(stack.project)
    table_id = f"{stack.project}.{pipeline_config.warehouse_dataset}.test_load_{run}"
    # The emulator does not create the table on load as BigQuery does: create it first.
    client.create_table(
        bigquery.Table(
            table_id,
            schema=[
                bigquery.SchemaField("partner_id", "STRING"),
                bigquery.SchemaField("region", "STRING"),
                bigquery.SchemaField("version", "INT64"),
            ],
        )
    )
    try:
        job = client.load_table_from_uri(
            f"gs://{pipeline_config.landing_bucket}/{blob.name}",
            table_id,
            job_config=bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.PARQUET),
        )
        job.result(timeout=60)
        rows = list(
            client.query(
                f"SELECT region, COUNT(*) AS n, SUM(version) AS s FROM `{table_id}` GROUP BY "
                "region ORDER BY region"
            ).result()
        )
        assert [(r["region"], r["n"], r["s"]) for r in rows] == [
            ("AMER", 50, sum(range(1, 100, 2))),
            ("EMEA", 50, sum(range(0, 100, 2))),
        ]
    finally:
        client.delete_table(table_id, not_found_ok=True)
        blob.delete()
