# The BigQuery emulator in its own environment (its pins clash with Airflow's). DuckDB's spatial
# extension is placed where DuckDB looks, so the emulator starts without downloading it.
FROM python:3.11-slim
ENV HOME=/var/lib/bqemulator
COPY stack/bqemulator-requirements.lock /requirements.lock
RUN pip install --no-cache-dir -r /requirements.lock \
 && mkdir -p "$HOME/.duckdb/extensions/v1.5.5/linux_amd64" \
 && cp "$(python -c 'import duckdb_extension_spatial, os; print(os.path.dirname(duckdb_extension_spatial.__file__))')/extensions/v1.5.5/spatial.duckdb_extension" "$HOME/.duckdb/extensions/v1.5.5/linux_amd64/"
