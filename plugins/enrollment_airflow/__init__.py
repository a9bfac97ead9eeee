"""Airflow glue for the enrollment pipelines: connections, shared DAG defaults, tags.

Business logic lives in the ``enrollment`` package (``include/``); this package only adapts it
to Airflow. Airflow puts the plugins folder on ``sys.path``, so DAG files import it directly.
"""
