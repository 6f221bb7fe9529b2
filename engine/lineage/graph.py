"""Walks the lineage the engine records: run records (a table version and the input versions it was built
from), bronze commits (the landing files each ingested), feature lineage (the table versions each
materialization and retrieval read) and MLflow runs (the table versions each training run read).

Upstream of a table version is the run that committed it (or the latest one before it, for versions a
maintenance or restore wrote) and, recursively, the versions it read, down to landing files. Downstream
are the table versions built from exactly that version, the feature views that read it and the MLflow runs
trained on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl
import pyarrow.compute as pc

from engine.columns import SOURCE_FILE
from engine.errors import TableNotFound, name_hint
from engine.features.lineage import read_lineage
from engine.layout import Layout
from engine.runlog import read_records
from engine.tables import delta

Kind = Literal["landing", "table", "feature_view", "mlflow_run"]
FEATURES_PREFIX = "features."
TABLE_VERSION_TAG = "medallion.table_version."
MAX_FILES = 50


@dataclass
class Node:
    """One thing in the lineage: a landing file, a table version, a feature view, an MLflow run."""

    kind: Kind
    name: str
    version: int | None = None
    detail: str = ""
    children: list[Node] = field(default_factory=list)

    def label(self) -> str:
        """`name vN (detail)`."""
        version = "" if self.version is None else f" v{self.version}"
        return f"{self.kind.replace('_', ' ')} {self.name}{version}" + (f" ({self.detail})" if self.detail else "")

    def as_dict(self) -> dict[str, Any]:
        """The node and its children as plain data (for `--json`)."""
        return {"kind": self.kind, "name": self.name, "version": self.version, "detail": self.detail,
                "children": [c.as_dict() for c in self.children]}

    def find(self, kind: Kind) -> list[Node]:
        """Every node of `kind` below this one, depth first."""
        found = [c for c in self.children if c.kind == kind]
        return found + [n for c in self.children for n in c.find(kind)]


MlflowSearch = Callable[[str, int], list[dict[str, str]]]


class Lineage:
    """The lineage recorded under one storage root.

    Args:
        root: the storage root.
        mlflow_runs: returns `(run id, tags)` of the MLflow runs that read `table` at `version`
            (see `mlflow_search`); None leaves MLflow out.
    """

    def __init__(self, root: str, mlflow_runs: MlflowSearch | None = None) -> None:
        self.layout = Layout.at(root)
        records = read_records(self.layout.runs())
        self.records = records.filter((pl.col("status") == "succeeded") & pl.col("output_version").is_not_null())
        self.features = read_lineage(self.layout.root)
        self.mlflow_runs = mlflow_runs

    def latest_version(self, table: str) -> int:
        """The latest version of a table (or of the table a feature view last read).

        Raises:
            TableNotFound: nothing of that name was recorded.
        """
        built = self.records.filter(pl.col("table") == table)
        if built.height:
            return int(built["output_version"].max())  # type: ignore[arg-type]
        hint = name_hint(table, self.records["table"].to_list(), "check the name with `medallion status`")
        raise TableNotFound(f"no run built `{table}` under {self.layout.root}; {hint}", table=table)

    def upstream(self, table: str, version: int, key: tuple[str, str] | None = None) -> Node:
        """What `table` at `version` was built from, down to landing files; `key` (column, value) narrows the
        landing files to those holding rows with that value, where the ingested table has the column."""
        node = Node("table", table, version)
        record = self._builder(table, version)
        if record is None:
            node.detail = "no run of the engine built it"
            return node
        node.detail = f"run {record['run_id']}"
        inputs: dict[str, int | None] = json.loads(record["input_versions"] or "{}")
        for parent, parent_version in sorted(inputs.items()):
            if parent_version is not None:
                node.children.append(self.upstream(parent, parent_version, key))
        if not inputs:
            node.children += self._landing_files(table, version, key)
        return node

    def downstream(self, table: str, version: int) -> Node:
        """The table versions built from exactly `table` at `version`, recursively, and the feature views and
        MLflow runs that read it."""
        node = Node("table", table, version)
        readers = self.records.filter(pl.col("input_versions").str.contains(json.dumps(table), literal=True))
        for reader in readers.iter_rows(named=True):
            if json.loads(reader["input_versions"]).get(table) == version:
                node.children.append(self.downstream(reader["table"], reader["output_version"]))
        uses = self.features.filter((pl.col("table") == table) & (pl.col("version") == version))
        for use in uses.iter_rows(named=True):
            for view in use["views"]:
                node.children.append(Node("feature_view", view, None, f"{use['kind']} at {use['at']:%Y-%m-%d %H:%M}, "
                                                                       f"{use['rows']:,} rows"))
        for run in self.mlflow_runs(table, version) if self.mlflow_runs else []:
            model = run.get("medallion.model_name")
            detail = f"job {run.get('medallion.job', '?')}" + (
                f", model {model} v{run.get('medallion.model_version')}" if model else "")
            node.children.append(Node("mlflow_run", run["run_id"], None, detail))
        return node

    def feature_view(self, view: str, key: tuple[str, str] | None = None) -> Node:
        """What the latest materialization (else retrieval) of `view` read, down to landing files.

        Raises:
            TableNotFound: no use of the view was recorded.
        """
        uses = self.features.filter(pl.col("views").list.contains(view))
        if not uses.height:
            raise TableNotFound(f"no materialization or retrieval of feature view `{view}` is recorded under "
                                f"{self.layout.root}; run `medallion features materialize` first")
        materialized = uses.filter(pl.col("kind") == "materialize")
        latest = (materialized if materialized.height else uses).sort("at").row(-1, named=True)
        node = Node("feature_view", view, None, f"{latest['kind']} at {latest['at']:%Y-%m-%d %H:%M}")
        node.children.append(self.upstream(latest["table"], int(latest["version"]), key))
        return node

    def run(self, run_id: str) -> list[Node]:
        """Upstream of every table version run `run_id` committed.

        Raises:
            TableNotFound: no table version was committed by that run.
        """
        built = self.records.filter(pl.col("run_id") == run_id)
        if not built.height:
            raise TableNotFound(f"run `{run_id}` committed no table under {self.layout.root}; list runs with "
                                "`medallion status`")
        return [self.upstream(r["table"], r["output_version"]) for r in built.iter_rows(named=True)]

    def _builder(self, table: str, version: int) -> dict[str, Any] | None:
        """The record of the run that committed `version` of `table`, else of the latest one before it."""
        built = self.records.filter((pl.col("table") == table) & (pl.col("output_version") <= version))
        return built.sort("output_version").row(-1, named=True) if built.height else None

    def _landing_files(self, table: str, version: int, key: tuple[str, str] | None) -> list[Node]:
        """The landing files the table held at `version`, narrowed by `key` when the table has its column."""
        uri = self.layout.table(table)
        if not delta.table_exists(uri):  # landing files are traced through Delta bronze tables
            return []
        rows = delta.rows_dataset(uri, table, version)
        if SOURCE_FILE not in rows.schema.names:
            return []
        detail = "ingested"
        if key is not None and key[0] in rows.schema.names:
            column, value = key
            found = rows.to_table(columns=[SOURCE_FILE], filter=pc.field(column) == value)
            detail = f"holds {column} = {value}"
        else:
            found = rows.to_table(columns=[SOURCE_FILE])
        names = sorted(pc.unique(found.column(SOURCE_FILE)).to_pylist())
        nodes = [Node("landing", name, None, detail) for name in names[:MAX_FILES]]
        if len(names) > MAX_FILES:
            nodes.append(Node("landing", f"... and {len(names) - MAX_FILES} more files", None, detail))
        return nodes


def mlflow_search(tracking_uri: str) -> MlflowSearch:
    """A search of the MLflow runs at `tracking_uri` that read a table version (their `table_version` tags)."""

    def search(table: str, version: int) -> list[dict[str, str]]:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        if not experiments:
            return []
        runs = client.search_runs(experiments, filter_string=f"tags.`{TABLE_VERSION_TAG}{table}` = '{version}'")
        return [{"run_id": run.info.run_id, **run.data.tags} for run in runs]

    return search
