"""Pipelines: tables declared as plain functions whose parameter names are their upstream tables."""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any, TypeVar

from engine.errors import PipelineDefinitionError, SelectionError
from engine.freshness import Freshness
from engine.ingest.postgres.source import PostgresSource
from engine.ingest.sources import FileSource
from engine.kinds import AnyKind, Append, Overwrite, key_columns
from engine.maintenance.policy import Maintenance
from engine.names import check_format, split_table_name
from engine.quality.checks import Quality
from engine.schema import SchemaEvolution
from engine.source_code import declared_code

TableFunction = TypeVar("TableFunction", bound=Callable[..., Any])
WriteKindType = AnyKind
PII_ACTIONS = ("tokenize", "mask", "encrypt")
"""What a table may declare for a personal-data column."""


def parameter_name(table: str) -> str:
    """The function parameter that stands for `table`: `silver.orders` -> `silver_orders`."""
    return table.replace(".", "_")


@dataclass(frozen=True)
class TableDefinition:
    """One table of a pipeline.

    Attributes:
        name: `<layer>.<name>`.
        kind: how new rows are written.
        inputs: upstream tables, in the order of the function's parameters.
        function: builds the table's rows from its inputs (Ray Datasets); None for ingested tables.
        source: landing files an ingested (bronze) table reads.
        ray_options: Ray resource options for the table's tasks (e.g. `{"num_cpus": 1}`): the reads of its inputs
            and its write tasks, or for an ingested table the ingestion of each landing file.
        quality: the table's checks, run on every row it writes.
        incremental: the function maps input rows independently (a cleaner, not an aggregate), so a run
            passes it only the rows its inputs gained since the table was last built, when they only grew.
        evolution: the schema changes the table accepts (added columns always; see `SchemaEvolution`).
        description: what the table holds.
        maintenance: how the table is compacted (z-order columns, file size, how often).
        subject: the column holding the data subject's id (e.g. `customer_id`); `medallion erase` removes a
            subject's rows from the table, its quarantine and change log through it.
        pii: personal-data columns and how they are protected before they are written, `tokenize` (keyed
            HMAC-SHA256), `mask` or `encrypt` (AES-256-GCM-SIV bound to the row, readable with the key); they are
            also kept out of the file statistics (Delta) or column metrics (Iceberg).
        owner: who answers for the table (a team or a person), for the catalog.
        tags: free-form labels for the catalog (`pii`, `finance`, ...).
        columns: documentation of columns by name, `{"customer_id": "the customer's id"}`; a documented
            column the built table lacks is reported (run record, catalog).
        freshness: how fresh the table's data must be (`engine.freshness`); `medallion status` reports it.
        table_format: `delta` or `iceberg`: the format the table is stored in (see `engine.tables.formats`);
            None: the settings' `storage.table_format` (Delta by default).
        on_demand: built only when a selection names it exactly: left out of the default selection (every
            table), of globs and of `+` expansions; for tables that need something from outside the lake,
            such as a registered model, that a plain pipeline run cannot assume.
    """

    name: str
    kind: WriteKindType
    inputs: tuple[str, ...] = ()
    function: Callable[..., Any] | None = None
    source: FileSource | PostgresSource | None = None
    ray_options: Mapping[str, Any] = field(default_factory=dict)
    quality: Quality | None = None
    incremental: bool = False
    evolution: SchemaEvolution = SchemaEvolution()
    description: str = ""
    maintenance: Maintenance = Maintenance()
    subject: str | None = None
    pii: Mapping[str, str] = field(default_factory=dict)
    owner: str = ""
    tags: tuple[str, ...] = ()
    columns: Mapping[str, str] = field(default_factory=dict)
    freshness: Freshness | None = None
    table_format: str | None = None
    on_demand: bool = False

    def unknown_documented_columns(self, names: Collection[str]) -> list[str]:
        """The documented columns (`columns`) that are not among `names`, the table's actual columns."""
        return [c for c in self.columns if c not in names]

    @property
    def code(self) -> str:
        """The function's code (`engine.source_code.code_text`), read once per process on first use, not as the
        table is declared: a Ray worker that imports the pipeline to run a table's tasks never needs it. A run
        reads the code of every table it builds before it calls any table function
        (`Pipeline.capture_code`), so the code holds the values its closure and the project's constants hold
        as declared, not what later calls make of them. Empty for ingested tables."""
        return declared_code(self.function) if self.function is not None else ""

    @property
    def dependencies(self) -> tuple[str, ...]:
        """Tables that must be built before this one: its inputs and the tables its checks reference."""
        referenced = [r.table for r in self.quality.references] if self.quality else []
        return tuple(dict.fromkeys([*self.inputs, *referenced]))

    @property
    def layer(self) -> str:
        """`bronze`, `silver`, `gold`, ..."""
        return split_table_name(self.name)[0]


class Pipeline:
    """A named set of tables. Tables are added with the `table` decorator or `ingest`.

    Example:
        >>> retail = Pipeline("retail")
        >>> @retail.table("silver.orders", kind=Merge(keys=["order_id"], sequence_by="updated_at"))
        ... def orders(bronze_orders):
        ...     return bronze_orders
    """

    def __init__(self, name: str, description: str = "", table_format: str | None = None) -> None:
        if not re.match(r"^[a-z][a-z0-9_]*$", name):
            raise PipelineDefinitionError(f"pipeline name `{name}` must be lower-case snake_case")
        self.name = name
        self.description = description
        self.table_format = None if table_format is None else check_format(table_format, f"pipeline `{name}`")
        self._tables: dict[str, TableDefinition] = {}

    @property
    def tables(self) -> Mapping[str, TableDefinition]:
        """Every table, by name, in declaration order."""
        return dict(self._tables)

    def table(
        self,
        name: str,
        *,
        kind: WriteKindType | None = None,
        ray_options: Mapping[str, Any] | None = None,
        quality: Quality | None = None,
        incremental: bool = False,
        evolution: SchemaEvolution | None = None,
        description: str | None = None,
        maintenance: Maintenance | None = None,
        subject: str | None = None,
        pii: Mapping[str, str] | None = None,
        owner: str = "",
        tags: Collection[str] = (),
        columns: Mapping[str, str] | None = None,
        freshness: Freshness | None = None,
        table_format: str | None = None,
        on_demand: bool = False,
    ) -> Callable[[TableFunction], TableFunction]:
        """Declare `name` as built by the decorated function; the function is returned unchanged.

        Args:
            name: `<layer>.<name>`.
            kind: write kind; `Overwrite()` when omitted.
            ray_options: Ray resource options for the table's tasks.
            quality: contract, expectations, references and unique keys checked on every write.
            incremental: pass only new input rows (see `TableDefinition.incremental`).
            evolution: the schema changes the table accepts; by default added columns and widened types.
            description: defaults to the function's docstring.
            maintenance: z-order columns, compacted file size and compaction interval.
            subject: the column holding the data subject's id, for erasure.
            pii: personal-data columns, `{"email": "tokenize", "first_name": "mask", "phone": "encrypt"}`.
            owner: who answers for the table.
            tags: labels for the catalog.
            columns: column documentation, `{"customer_id": "the customer's id"}`.
            freshness: the freshness target, e.g. `Freshness(max_age="6h")`.
            table_format: `delta` or `iceberg`; the pipeline's `table_format` when omitted (and when the
                pipeline has none, the settings' `storage.table_format`).
            on_demand: build the table only when a selection names it (see `TableDefinition.on_demand`).
        """
        check_pii_declaration(name, pii or {}, key_columns(kind) if kind is not None else ())
        catalog = _catalog_fields(name, owner, tags, columns, freshness)

        def register(function: TableFunction) -> TableFunction:
            inputs = self._inputs_of(name, function)
            self._add(TableDefinition(
                name=name,
                kind=kind or Overwrite(),
                inputs=inputs,
                function=function,
                ray_options=dict(ray_options or {}),
                quality=quality,
                incremental=incremental,
                evolution=evolution or SchemaEvolution(),
                description=description if description is not None else inspect.getdoc(function) or "",
                maintenance=maintenance or Maintenance(),
                subject=subject,
                pii=dict(pii or {}),
                **catalog,
                table_format=table_format or self.table_format,
                on_demand=on_demand,
            ))
            return function

        return register

    def ingest(self, name: str, source: FileSource | PostgresSource, *, ray_options: Mapping[str, Any] | None = None,
               description: str = "", maintenance: Maintenance | None = None, subject: str | None = None,
               owner: str = "", tags: Collection[str] = (), columns: Mapping[str, str] | None = None,
               freshness: Freshness | None = None, table_format: str | None = None) -> TableDefinition:
        """Declare `name` as an append-only table of the landing files of `source`, as they arrive, or of a
        PostgreSQL table's snapshot and then its changes (`PostgresSource`); `ray_options` are the Ray resource
        options of its ingestion tasks (one per landing file, key range or batch of changes: read, parse, stage);
        `subject` names the field holding the data subject's id (erasure also rewrites landing files); `owner`,
        `tags`, `columns` and `freshness` as for `table`; `table_format` is the pipeline's when omitted."""
        definition = TableDefinition(name=name, kind=Append(), source=source, ray_options=dict(ray_options or {}),
                                     description=description, maintenance=maintenance or Maintenance(),
                                     subject=subject,
                                     **_catalog_fields(name, owner, tags, columns, freshness),
                                     table_format=table_format or self.table_format)
        self._add(definition)
        return definition

    def with_sources(self, name: str, sources: Mapping[str, FileSource | PostgresSource],
                     description: str | None = None) -> Pipeline:
        """A pipeline named `name` with this one's tables, its ingested tables in `sources` reading those sources
        instead (the same data product fed from a database rather than files, say).

        Raises:
            PipelineDefinitionError: a table named in `sources` is not an ingested table of this pipeline.
        """
        wrong = [table for table in sources if table not in self._tables or self._tables[table].source is None]
        if wrong:
            raise PipelineDefinitionError(f"pipeline `{self.name}` has no ingested table `{wrong[0]}`; its ingested "
                                          f"tables: {', '.join(t for t, d in self._tables.items() if d.source)}",
                                          table=wrong[0])
        derived = Pipeline(name, self.description if description is None else description, self.table_format)
        for table, definition in self._tables.items():
            derived._add(dataclasses.replace(definition, source=sources[table]) if table in sources else definition)
        return derived

    def _add(self, definition: TableDefinition) -> None:
        split_table_name(definition.name)
        _check_table_format(definition)
        if definition.name in self._tables:
            raise PipelineDefinitionError(
                f"table `{definition.name}` is declared twice in pipeline `{self.name}`; rename one",
                table=definition.name,
            )
        clash = [t for t in self._tables if parameter_name(t) == parameter_name(definition.name)]
        if clash:
            raise PipelineDefinitionError(
                f"tables `{clash[0]}` and `{definition.name}` share the parameter name "
                f"`{parameter_name(definition.name)}`; rename one",
                table=definition.name,
            )
        self._tables[definition.name] = definition

    @staticmethod
    def _inputs_of(name: str, function: Callable[..., Any]) -> tuple[str, ...]:
        inputs = []
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise PipelineDefinitionError(
                    f"table `{name}`: function `{function.__name__}` takes *args or **kwargs; "
                    "name each upstream table as a parameter instead",
                    table=name,
                )
            if "_" not in parameter.name:
                raise PipelineDefinitionError(
                    f"table `{name}`: parameter `{parameter.name}` does not name a table; "
                    "use `<layer>_<table>`, e.g. `silver_orders`",
                    table=name,
                )
            inputs.append(parameter.name)
        return tuple(inputs)

    def resolve(self) -> dict[str, TableDefinition]:
        """Every table with its inputs resolved to table names, checked for unknown inputs and cycles.

        Raises:
            PipelineDefinitionError: an input names no table of the pipeline, tables form a cycle, or a table
                that is not on demand reads one that is.
        """
        by_parameter = {parameter_name(t): t for t in self._tables}
        resolved = {}
        for definition in self._tables.values():
            inputs = []
            for parameter in definition.inputs:
                if parameter not in by_parameter:
                    raise PipelineDefinitionError(
                        f"table `{definition.name}` reads `{parameter}`, which is no table of pipeline "
                        f"`{self.name}`; known tables: {', '.join(sorted(by_parameter.values()))}",
                        table=definition.name,
                    )
                inputs.append(by_parameter[parameter])
            resolved[definition.name] = dataclasses.replace(definition, inputs=tuple(inputs))
            unknown = [t for t in resolved[definition.name].dependencies if t not in self._tables]
            if unknown:
                raise PipelineDefinitionError(
                    f"table `{definition.name}` checks references to `{unknown[0]}`, which is no table of "
                    f"pipeline `{self.name}`",
                    table=definition.name,
                )
        for definition in resolved.values():
            on_demand = [t for t in definition.dependencies if self._tables[t].on_demand]
            if on_demand and not definition.on_demand:
                raise PipelineDefinitionError(
                    f"table `{definition.name}` reads on-demand table `{on_demand[0]}`, which a plain run does "
                    "not build; declare it `on_demand=True` too", table=definition.name)
        _check_acyclic(resolved)
        return resolved

    def order(self) -> list[str]:
        """Every table, upstream before downstream (ties in declaration order)."""
        return _topological(self.resolve())

    def capture_code(self, names: Collection[str]) -> None:
        """Read the code of the tables `names` now (see `TableDefinition.code`)."""
        for name in names:
            _ = self._tables[name].code

    def select(self, expression: str | None = None) -> list[str]:
        """The tables an expression selects, upstream before downstream; every table but the on-demand ones
        when None or empty.

        An expression is terms separated by spaces or commas. A term is a table name or a glob
        (`silver.*`); `+name` adds everything upstream of it, `name+` everything downstream. An on-demand
        table is selected only by a term that names it exactly.

        Raises:
            SelectionError: a term matches no table, or only on-demand tables it does not name exactly.
        """
        resolved = self.resolve()
        order = _topological(resolved)
        if not expression or not expression.strip():
            return [t for t in order if not resolved[t].on_demand]
        chosen: set[str] = set()
        for term in filter(None, re.split(r"[\s,]+", expression.strip())):
            chosen |= _select_term(term, resolved)
        return [t for t in order if t in chosen]

    def named(self, expression: str | None) -> set[str]:
        """The tables an expression names by their name (`bronze.orders`, also with `+` around it), not by a glob
        or as what a `+` expands to."""
        terms = {term.strip("+") for term in re.split(r"[\s,]+", (expression or "").strip())}
        return terms & set(self._tables)


def _catalog_fields(name: str, owner: str, tags: Collection[str], columns: Mapping[str, str] | None,
                    freshness: Freshness | None) -> dict[str, Any]:
    """`owner`, `tags`, `columns` and `freshness` of table `name`, checked.

    Raises:
        PipelineDefinitionError: one of them has the wrong type or an empty name.
    """
    if not isinstance(owner, str):
        raise PipelineDefinitionError(f"table `{name}`: owner must be a string, not {owner!r}", table=name)
    if isinstance(tags, str) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise PipelineDefinitionError(
            f"table `{name}`: tags must be a tuple of non-empty strings, e.g. (\"finance\", \"daily\"), not {tags!r}",
            table=name)
    columns = dict(columns or {})
    bad = [c for c, doc in columns.items() if not isinstance(c, str) or not c or not isinstance(doc, str)]
    if bad:
        raise PipelineDefinitionError(
            f"table `{name}`: columns maps column names to their documentation (strings); check {bad[0]!r}",
            table=name)
    if freshness is not None and not isinstance(freshness, Freshness):
        raise PipelineDefinitionError(
            f"table `{name}`: freshness must be a Freshness(max_age=...), not {freshness!r}", table=name)
    return {"owner": owner.strip(), "tags": tuple(dict.fromkeys(t.strip() for t in tags)), "columns": columns,
            "freshness": freshness}


def _check_table_format(definition: TableDefinition) -> None:
    """The table's declared format, if any, exists.

    Raises:
        PipelineDefinitionError: an unknown format.
    """
    if definition.table_format is not None:
        check_format(definition.table_format, f"table `{definition.name}`")


def _graph(resolved: Mapping[str, TableDefinition]) -> dict[str, tuple[str, ...]]:
    return {name: definition.dependencies for name, definition in resolved.items()}


def _check_acyclic(resolved: Mapping[str, TableDefinition]) -> None:
    try:
        TopologicalSorter(_graph(resolved)).prepare()
    except CycleError as err:
        cycle = " -> ".join(err.args[1])
        raise PipelineDefinitionError(
            f"tables form a cycle: {cycle}; a table cannot read itself, directly or through others",
            table=err.args[1][0],
        ) from None


def _topological(resolved: Mapping[str, TableDefinition]) -> list[str]:
    position = {name: i for i, name in enumerate(resolved)}
    sorter = TopologicalSorter(_graph(resolved))
    sorter.prepare()
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(ready)
        sorter.done(*ready)
    return order


def _closure(start: set[str], edges: Mapping[str, set[str]]) -> set[str]:
    seen, todo = set(start), list(start)
    while todo:
        for neighbour in edges.get(todo.pop(), ()):
            if neighbour not in seen:
                seen.add(neighbour)
                todo.append(neighbour)
    return seen


def _select_term(term: str, resolved: Mapping[str, TableDefinition]) -> set[str]:
    upstream, downstream = term.startswith("+"), term.endswith("+") and len(term) > 1
    pattern = term.strip("+")
    globbed = {name for name in resolved if fnmatch.fnmatchcase(name, pattern)}
    if not globbed:
        raise SelectionError(
            f"selection `{term}` matches no table; known tables: {', '.join(resolved)}"
        )
    matched = {name for name in globbed if name == pattern or not resolved[name].on_demand}
    if not matched:
        raise SelectionError(f"selection `{term}` matches only on-demand tables ({', '.join(sorted(globbed))}), "
                             "which are built only when named exactly")
    parents = {name: set(d.dependencies) for name, d in resolved.items()}
    children: dict[str, set[str]] = {name: set() for name in resolved}
    for name, definition in resolved.items():
        for parent in definition.dependencies:
            children[parent].add(name)
    expanded: set[str] = set()
    if upstream:
        expanded |= _closure(matched, parents)
    if downstream:
        expanded |= _closure(matched, children)
    return matched | {name for name in expanded if not resolved[name].on_demand}


def check_pii_declaration(table: str, pii: Mapping[str, str], keys: Collection[str] = ()) -> None:
    """Raise when a table declares an unknown action for a personal-data column, or encrypts one of its `keys`.

    Raises:
        PipelineDefinitionError: an action other than `tokenize`, `mask` or `encrypt`; `encrypt` on a key
            column (encrypted values never compare equal, and they are bound to the key).
    """
    for column, action in pii.items():
        if action not in PII_ACTIONS:
            raise PipelineDefinitionError(f"table `{table}` declares `{action}` for personal-data column `{column}`; "
                                          f"use one of {', '.join(PII_ACTIONS)}", table=table)
        if action == "encrypt" and column in keys:
            raise PipelineDefinitionError(f"table `{table}` declares its key column `{column}` `encrypt`; keys "
                                          "must compare equal: `tokenize` it instead", table=table)
