"""Arrow helpers shared by the readers and writers."""

from __future__ import annotations

import functools
import operator

import pyarrow as pa
import pyarrow.compute as pc

UTC = "UTC"


def storage_type(data_type: pa.DataType) -> pa.DataType:
    """The type a column is stored as in a table.

    Timestamps become microseconds in UTC (the same instants; a timestamp without a zone is taken as UTC;
    finer units are truncated), string and binary
    views and large variants become plain strings and binaries, dictionaries are decoded and the null type
    becomes string. Nested types are converted field by field.
    """
    if pa.types.is_timestamp(data_type):
        return pa.timestamp("us", tz=UTC)
    if pa.types.is_large_string(data_type) or pa.types.is_string_view(data_type):
        return pa.string()
    if pa.types.is_large_binary(data_type) or pa.types.is_binary_view(data_type):
        return pa.binary()
    if pa.types.is_dictionary(data_type):
        return storage_type(data_type.value_type)
    if pa.types.is_null(data_type):
        return pa.string()
    if pa.types.is_struct(data_type):
        return pa.struct([field.with_type(storage_type(field.type)) for field in data_type])
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_list_view(data_type):
        return pa.list_(data_type.value_field.with_type(storage_type(data_type.value_type)))
    return data_type


def storage_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with every field converted by `storage_type`, metadata dropped."""
    return pa.schema([field.with_type(storage_type(field.type)) for field in schema])


def to_storage(table: pa.Table) -> pa.Table:
    """`table` cast to its storage schema (see `storage_type`); a no-op when already there."""
    target = storage_schema(table.schema)
    if target.equals(table.schema.remove_metadata()):
        return table.replace_schema_metadata(None)
    columns = [
        column.cast(field.type, safe=not pa.types.is_timestamp(column.type))
        for column, field in zip(table.columns, target)
    ]
    return pa.Table.from_arrays(columns, schema=target)


def unify(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema holding every field of `schemas`, in first-seen order, types widened where they differ."""
    return pa.unify_schemas(schemas, promote_options="permissive")


def key_filter(schema: pa.Schema, keys: pa.Table) -> pc.Expression | None:
    """A filter on the rows (of `schema`) whose every key column holds one of `keys`' values of that column (or
    null, where one is null): a superset of the rows of `keys`. A column `schema` lacks, or whose values do not
    convert to its type there, is not filtered on; None when no column is."""
    conditions = []
    for name, column in zip(keys.column_names, keys.columns):
        if name not in schema.names:
            continue
        try:
            values = pc.unique(column.drop_null()).cast(schema.field(name).type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        condition = pc.field(name).isin(values)
        conditions.append(condition | pc.field(name).is_null() if column.null_count else condition)
    return functools.reduce(operator.and_, conditions) if conditions else None
