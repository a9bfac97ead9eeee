#!/usr/bin/env bash
# Every Airflow container starts here: the admin's and the read-only viewer's passwords
# (AIRFLOW_ADMIN_PASSWORD, AIRFLOW_VIEWER_PASSWORD, from .env) go into the simple auth manager's
# users file, created 0600 (never readable by others, not even for a moment), then the variables
# are dropped and Airflow's own entrypoint runs the command.
set -euo pipefail
: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD in .env (see .env.example)}"
: "${AIRFLOW_VIEWER_PASSWORD:?set AIRFLOW_VIEWER_PASSWORD in .env (see .env.example)}"
: "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"
python - <<'PY'
import json
import os

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.fchmod(fd, 0o600)
# The users of AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS (admin:admin,viewer:viewer).
with os.fdopen(fd, "w", encoding="utf-8") as fh:
    json.dump({"admin": os.environ["AIRFLOW_ADMIN_PASSWORD"], "viewer": os.environ["AIRFLOW_VIEWER_PASSWORD"]}, fh)
PY
unset AIRFLOW_ADMIN_PASSWORD AIRFLOW_VIEWER_PASSWORD
exec /entrypoint "$@"
