"""The Atlas worker: takes queued batches off Redis and persists them in PostgreSQL."""
