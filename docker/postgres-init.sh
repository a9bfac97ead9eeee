#!/usr/bin/env bash
# Run once by the postgres image when its volume is created: Airflow's metadata database gets an
# ordinary role (no superuser, cannot create databases or roles) that owns only that database.
# The password comes from AIRFLOW_DB_PASSWORD (.env) through a psql variable, never a command line.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -X --username "$POSTGRES_USER" --dbname postgres -v pw="$AIRFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'pw' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
CREATE DATABASE airflow OWNER airflow;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
SQL
