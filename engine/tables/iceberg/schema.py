"""Arrow and Iceberg schemas: the columns the engine stores, the table's columns evolved to take new ones, and
rows read from a table in storage types without field ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from engine.arrow import storage_schema, to_storage

if TYPE_CHECKING:
    from pyiceberg.table import Transaction as IcebergTransaction

_WIDER = {pa.uint8(): pa.int32(), pa.uint16(): pa.int32(), pa.uint32(): pa.int64(), pa.uint64(): pa.int64()}


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` in storage types without field metadata: Iceberg field ids must not travel into files the engine
    writes, where readers would resolve columns by them."""
    return pa.schema([f.with_type(f.type).remove_metadata() for f in storage_schema(schema)])


def plain(rows: pa.Table) -> pa.Table:
    """`rows` read from an Iceberg table, in storage types without field ids."""
    rows = to_storage(rows)
    return pa.Table.from_arrays(rows.columns, schema=plain_schema(rows.schema))


def nullable(schema: pa.Schema) -> pa.Schema:
    """The Arrow schema of the Iceberg columns for `schema`: every column optional (Iceberg requires non-nullable
    Arrow fields for required columns, and the engine's files may hold nulls anywhere), unsigned integers widened
    to the signed type holding all their values (pyiceberg would map uint32 to a 32-bit int)."""
    return pa.schema([f.with_type(_WIDER.get(f.type, f.type)).with_nullable(True).remove_metadata()
                      for f in storage_schema(schema)])


def as_stored(schema: pa.Schema) -> pa.Schema:
    """`schema` as the engine stores it in an Iceberg table (Iceberg has no unsigned integers, for example)."""
    from pyiceberg.io.pyarrow import _pyarrow_to_schema_without_ids

    stored = plain_schema(_pyarrow_to_schema_without_ids(nullable(schema)).as_arrow())
    return pa.schema([f.with_nullable(schema.field(f.name).nullable) for f in stored])


def evolve(tx: IcebergTransaction, schema: pa.Schema, drop_missing: bool) -> None:
    """Add the columns of `schema` the table lacks (and widen types), in the commit being built; with
    `drop_missing` (an overwrite) also drop the columns `schema` lacks."""
    current = tx.table_metadata.schema()
    present = {f.name for f in current.fields}
    missing = [name for name in present if name not in schema.names] if drop_missing else []
    incoming = nullable(schema)
    if all(f.name in present for f in incoming) and not missing:
        from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible

        try:
            _check_pyarrow_schema_compatible(current, incoming, format_version=tx.table_metadata.format_version)
            return
        except ValueError:
            pass
    with tx.update_schema() as update:
        update.union_by_name(incoming)
        for name in missing:
            update.delete_column(name)


def ensure_name_mapping(tx: IcebergTransaction) -> None:
    """Map column names to field ids for files written without ids (what `add_files` does)."""
    from pyiceberg.table import TableProperties

    if tx.table_metadata.name_mapping() is None:
        tx.set_properties({
            TableProperties.DEFAULT_NAME_MAPPING: tx.table_metadata.schema().name_mapping.model_dump_json()})
