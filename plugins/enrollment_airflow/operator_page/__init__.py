"""The operator's page in the Airflow UI ("Enrollment pipeline"): see ``app``."""
