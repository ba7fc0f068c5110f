"""The ``atlas-server`` command: it names every service, starts and supervises them, and runs the
operator's one-shot tasks (migrate, keys, accounts, failed batches)."""
