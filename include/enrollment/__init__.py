"""The enrollment pipeline's domain library: importable and testable without a running Airflow."""
