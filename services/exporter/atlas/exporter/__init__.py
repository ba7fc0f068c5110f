"""The Atlas exporter: streaming CSV, JSON and NDJSON exports of widget logs."""
