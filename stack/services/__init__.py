"""The real services of the local stack, one class each: how to prepare, start, probe and set up.

Every service binds 127.0.0.1, runs in its own process group (some are a wrapper plus a JVM),
logs to ``<state>/<service>/<service>.log`` and keeps its data under the state folder.

One module per service (``kafka``, ``solr``, ``gcs``, ``bigquery``, ``firestore``,
``marketing_cloud``, ``airflow``, ``redis``, ``celery_worker``), what they share in ``base``, their
start order in ``registry``; every name is importable from ``stack.services``.
"""

from .airflow import Airflow
from .base import LOG4J2, STACK, Service, ServiceError
from .bigquery import BigQuery
from .celery_worker import CeleryWorker
from .firestore import FIRESTORE_EMULATOR_CANDIDATES, Firestore
from .gcs import CloudStorage
from .kafka import Kafka
from .marketing_cloud import MarketingCloudStub
from .redis import Redis
from .registry import ALL, CELERY_NAMES, NAMES, stack_services
from .solr import Solr

__all__ = [
    "ALL",
    "CELERY_NAMES",
    "FIRESTORE_EMULATOR_CANDIDATES",
    "LOG4J2",
    "NAMES",
    "STACK",
    "Airflow",
    "BigQuery",
    "CeleryWorker",
    "CloudStorage",
    "Firestore",
    "Kafka",
    "MarketingCloudStub",
    "Redis",
    "Service",
    "ServiceError",
    "Solr",
    "stack_services",
]
