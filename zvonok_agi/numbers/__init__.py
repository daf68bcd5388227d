"""The control plane: accounts, subscriber numbers, campaigns, reservation, bindings, requests.

`rules` holds the pure rules, `store` the SQLite source of truth, `service` the one layer that
the admin API and the CLI both call; every change is published to Redis through the engine's
routing-data module.
"""
