# Airflow with the project's locked dependencies; DAGs, plugins and include/ are mounted.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.lock /requirements.lock
RUN pip install --no-cache-dir -r /requirements.lock
