#!/usr/bin/env bash
# Every Airflow container starts here: the admin's password (AIRFLOW_ADMIN_PASSWORD, from .env)
# goes into the simple auth manager's users file, created 0600 (never readable by others, not even
# for a moment), then the variable is dropped and Airflow's own entrypoint runs the command.
set -euo pipefail
: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD in .env (see .env.example)}"
: "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"
python - <<'PY'
import json
import os

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.fchmod(fd, 0o600)
with os.fdopen(fd, "w", encoding="utf-8") as fh:
    json.dump({"admin": os.environ["AIRFLOW_ADMIN_PASSWORD"]}, fh)
PY
unset AIRFLOW_ADMIN_PASSWORD
exec /entrypoint "$@"
