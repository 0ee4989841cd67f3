"""Running it: configuration, the database pool, embedded PostgreSQL, migrations, workers,
metrics, logs and the command line."""
