"""The names a declaration may use: table names (`<layer>.<name>`) and table formats."""

from __future__ import annotations

import re

from engine.errors import PipelineDefinitionError

TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")

DELTA = "delta"
ICEBERG = "iceberg"
FORMATS = (DELTA, ICEBERG)


def split_table_name(table: str) -> tuple[str, str]:
    """`("silver", "orders")` for `"silver.orders"`.

    Raises:
        PipelineDefinitionError: the name is not `<layer>.<name>` in lower-case snake_case.
    """
    if not TABLE_NAME.match(table):
        raise PipelineDefinitionError(
            f"table name `{table}` is not of the form `<layer>.<name>` in lower-case snake_case "
            "(for example `silver.orders`)",
            table=table,
        )
    layer, name = table.split(".")
    return layer, name


def check_format(value: str, where: str) -> str:
    """`value` when it names a table format.

    Raises:
        PipelineDefinitionError: it names none.
    """
    if value not in FORMATS:
        raise PipelineDefinitionError(
            f"{where}: table format `{value}` is unknown; use one of {', '.join(f'`{f}`' for f in FORMATS)}")
    return value
