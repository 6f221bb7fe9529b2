"""The retail data product fed from PostgreSQL: the customers and orders of the landing feeds written into a
database by an application, and the same pipeline reading them from there by change data capture
(`docs/sources.md`).

`write_deliveries` plays the application: each delivery file of the `customers` and `orders` feeds is applied
to the tables `<schema>.customers` and `<schema>.orders` (one text column per field, keyed by `customer_id` and
`order_id`) in one transaction, record after record as an upsert, so the write-ahead log holds every record of the
feed in its order: a late or repeated record is written late or twice, a delete is the row's tombstone
(`op = 'd'`, as the feed's record). A field first seen in a delivery adds its column. `retail_db` is `retail` with
`bronze.customers` and `bronze.orders` read from those tables: started before the first delivery is written, it
builds the gold tables the files build.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
from psycopg import sql

from engine import Pipeline, PostgresSource
from pipelines.retail.pipeline import retail

DATABASE_ENV = "RETAIL_DATABASE_URL"
"""The environment variable holding the database's connection string."""
SCHEMA = "retail"
KEYS = {"customers": "customer_id", "orders": "order_id"}
"""The feeds written into the database, and the field keying each table."""


def retail_from(schema: str = SCHEMA, dsn_env: str = DATABASE_ENV) -> Pipeline:
    """`retail` with its customers and orders read from `<schema>.customers` and `<schema>.orders`."""
    return retail.with_sources("retail_db", {
        f"bronze.{table}": PostgresSource(f"{schema}.{table}", dsn_env=dsn_env) for table in KEYS},
        description="Online retail with customers and orders from the shop's PostgreSQL database.")


retail_db = retail_from()


def create_tables(schema: str = SCHEMA, dsn_env: str = DATABASE_ENV) -> None:
    """Create the schema and its tables, each with its key column alone, unless they exist."""
    with psycopg.connect(os.environ[dsn_env], autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        for table, key in KEYS.items():
            connection.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.{} ({} text PRIMARY KEY)").format(
                sql.Identifier(schema), sql.Identifier(table), sql.Identifier(key)))


def write_deliveries(landing_root: str | os.PathLike[str], schema: str = SCHEMA, dsn_env: str = DATABASE_ENV,
                     batch: int | None = None) -> dict[str, int]:
    """Apply the delivery files of the customers and orders feeds under `landing_root` (all, in name order, or
    only the `batch`-th), each in one transaction; the records applied, by table."""
    applied = {}
    with psycopg.connect(os.environ[dsn_env]) as connection:
        for table, key in KEYS.items():
            files = sorted(Path(landing_root, table).glob("*.jsonl"))
            files = files if batch is None else files[batch - 1:batch]
            applied[table] = sum(_apply(connection, schema, table, key, path) for path in files)
    return applied


def _apply(connection: psycopg.Connection, schema: str, table: str, key: str, path: Path) -> int:
    """Apply one delivery file, record after record, in one transaction (the server loops over the records)."""
    with connection.transaction():
        connection.execute("CREATE TEMPORARY TABLE incoming (n bigserial, line text) ON COMMIT DROP")
        # CSV with quote and delimiter characters JSON text never holds: each line arrives as it is.
        with connection.cursor().copy("COPY incoming (line) FROM STDIN (FORMAT csv, QUOTE e'\\x01', "
                                      "DELIMITER e'\\x02')") as copy:
            copy.write(path.read_bytes())
        target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        fields = [row[0] for row in connection.execute(
            "SELECT field FROM incoming, jsonb_object_keys(line::jsonb) AS field GROUP BY field ORDER BY min(n)")]
        for field in fields:
            connection.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} text").format(
                target, sql.Identifier(field)))
        columns = [row[0] for row in connection.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum", (target.as_string(connection),))]
        others = [sql.Identifier(c) for c in columns if c != key]
        upsert = sql.SQL(
            "INSERT INTO {target} SELECT * FROM jsonb_populate_record(NULL::{target}, record.line::jsonb) "
            "ON CONFLICT ({key}) DO UPDATE SET ({others}) = ROW({excluded})").format(
            target=target, key=sql.Identifier(key), others=sql.SQL(", ").join(others),
            excluded=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(c) for c in others))
        connection.execute(sql.SQL("DO $apply$ DECLARE record record; BEGIN FOR record IN SELECT line FROM incoming "
                                   "ORDER BY n LOOP {upsert}; END LOOP; END $apply$").format(upsert=upsert))
        count = connection.execute("SELECT count(*) FROM incoming").fetchone()
    return int(count[0]) if count else 0
