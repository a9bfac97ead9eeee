"""The services of the stack, in start order: their names and ``stack_services``."""

from __future__ import annotations

from ..config import StackConfig
from .airflow import Airflow
from .base import Service
from .bigquery import BigQuery
from .celery_worker import CeleryWorker
from .firestore import Firestore
from .gcs import CloudStorage
from .kafka import Kafka
from .marketing_cloud import MarketingCloudStub
from .redis import Redis
from .solr import Solr

ALL = (Kafka, Solr, CloudStorage, BigQuery, Firestore, MarketingCloudStub, Airflow)
NAMES = tuple(s.name for s in ALL)
CELERY_NAMES = ("redis",)  # and one ``worker-<name>`` per configured Celery worker


def stack_services(cfg: StackConfig, every: bool = False) -> list[Service]:
    """The services of this stack, in start order: with Celery, Redis before Airflow and the
    workers after it. ``every``: also the Celery parts of a stack that runs LocalExecutor now
    (``down`` stops what an earlier ``STACK_EXECUTOR=celery up`` left)."""
    from enrollment.config import load_config

    services: list[Service] = [cls(cfg) for cls in ALL]
    if cfg.celery or every:
        services.insert(len(services) - 1, Redis(cfg))
        services += [CeleryWorker(cfg, worker) for worker in load_config().celery_workers]
    return services
