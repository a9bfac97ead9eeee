"""One ingest DAG per configured region (include/enrollment/config/pipeline.yaml): adding a
region is a line of configuration."""

from enrollment.config import load_config
from enrollment_airflow.ingest import ingest_dag

for _region in load_config().regions:
    globals()[f"ingest_{_region.code.lower()}"] = ingest_dag(_region)
