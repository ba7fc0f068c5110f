"""Server-wide pieces shared by the ingest, worker, exporter and dashboard services:
configuration, the PostgreSQL schema, the Redis queue and the ``atlas-server`` command."""
