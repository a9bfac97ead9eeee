# The Marketing Cloud contract stub (no emulator of the service exists).
FROM python:3.11-slim
RUN pip install --no-cache-dir "fastapi>=0.115" "uvicorn>=0.30"
COPY stack/__init__.py /app/stack/__init__.py
COPY stack/marketing_cloud_stub/ /app/stack/marketing_cloud_stub/
WORKDIR /app
