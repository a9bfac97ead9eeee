"""One sync DAG per configured sink (Firestore, Solr, Marketing Cloud): see
enrollment_airflow.sync."""

from enrollment.config import load_config
from enrollment_airflow.sync import sync_dag

for _sink in load_config().sinks:
    globals()[f"sync_{_sink}"] = sync_dag(_sink)
