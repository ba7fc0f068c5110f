"""The library every Atlas server service stands on: configuration, the PostgreSQL schema and pool,
the Redis queue, encryption at rest, accounts and the shared HTTP pieces. It imports only the contract."""
