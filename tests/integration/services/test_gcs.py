"""Cloud Storage: the landing bucket exists; an object written once cannot be overwritten."""

import uuid

import pytest
from google.api_core.exceptions import PreconditionFailed

from enrollment.clients.services import storage_client

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


def test_write_once_object_in_the_landing_bucket(stack, pipeline_config):
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    blob = bucket.blob(f"test/{uuid.uuid4().hex}/batch.parquet")
    blob.upload_from_string(b"first", if_generation_match=0)
    try:
        with pytest.raises(PreconditionFailed):
            bucket.blob(blob.name).upload_from_string(b"second", if_generation_match=0)
        assert bucket.blob(blob.name).download_as_bytes() == b"first"
        listed = [
            b.name
            for b in storage_client(stack.project).list_blobs(
                pipeline_config.landing_bucket, prefix=blob.name
            )
        ]
        assert listed == [blob.name]
    finally:
        blob.delete()
