# Airflow with the project's locked dependencies; DAGs, plugins and include/ are mounted.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.lock /requirements.lock
RUN pip install --no-cache-dir -r /requirements.lock
# Writes the admin's password from AIRFLOW_ADMIN_PASSWORD (0600), then runs the image's entrypoint.
COPY --chmod=0755 docker/airflow-entrypoint.sh /opt/enrollment/airflow-entrypoint.sh
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/opt/enrollment/airflow-entrypoint.sh"]
