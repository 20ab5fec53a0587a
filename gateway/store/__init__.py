"""The store: every SQL statement, the schema (models and migrations), rollups, and the typed
reads of exchanges, runs, replays and exports. SQLite or PostgreSQL, chosen by URL.

    exchanges.py   the connection, writing batches, reading exchanges, the quarantine
    runs.py        what the grouper decided, written; runs read back
    replays.py     diffs and experiments
    datasets.py    datasets, their versions and items
    judges.py      LLM judge definitions, kept as given
    exports.py     keyset-paged reads for export
    rollups.py     per-hour dashboard totals, kept in the writer's transactions
    alerts.py      alert rules, the alerts they raised, and the windows they measure
    models.py      the schema, as Tortoise models (the one description: tests/test_schema.py)
    migrations/    the committed migrations made from the models
"""
