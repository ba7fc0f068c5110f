"""The library every Atlas server service stands on: configuration, the PostgreSQL schema and pool,
the Redis queue, encryption at rest, accounts, the server error tree (``errors``) and the HTTP edge
the apps share (``edge``, ``web``). It imports only the contract."""
