"""The Atlas ingest service: authenticates, decrypts, validates and queues widget-log batches."""
