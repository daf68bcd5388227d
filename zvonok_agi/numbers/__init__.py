"""The control plane: accounts, subscriber numbers, campaigns, reservation, bindings, requests.

`rules` holds the pure rules, `store` the source of truth (SQLite or PostgreSQL), `service` the
one layer that the admin API and the CLI both call; every change is published to Redis through
the engine's routing-data module.
"""
