"""Where tables live under the storage root."""

from __future__ import annotations

import os
from dataclasses import dataclass

from engine.names import split_table_name

META = "_meta"
"""The root's folder of engine records: runs, quality, leases, definitions, features, secrets, ..."""
STAGING = "_staging"
"""The root's folder of files written by a run before they are applied."""


def absolute_root(root: str) -> str:
    """`root` as an absolute location: a URI is kept, a local path is made absolute."""
    if "://" in root:
        return root.rstrip("/")
    return os.path.abspath(os.path.expanduser(root))


@dataclass(frozen=True)
class Layout:
    """The folders of one storage root.

    Attributes:
        root: absolute path or URI of the root.
    """

    root: str

    @classmethod
    def at(cls, root: str) -> Layout:
        """The layout of `root`, made absolute."""
        return cls(absolute_root(root))

    def table(self, table: str) -> str:
        """`<root>/<layer>/<name>`."""
        layer, name = split_table_name(table)
        return f"{self.root}/{layer}/{name}"

    def location(self, table: str) -> str:
        """The folder of `table`, a layer table (`silver.orders`) or a quarantine (`quarantine.silver.orders`)."""
        if table.startswith("quarantine."):
            return self.quarantine(table.removeprefix("quarantine."))
        return self.table(table)

    def quarantine(self, table: str) -> str:
        """`<root>/quarantine/<layer>/<name>`."""
        layer, name = split_table_name(table)
        return f"{self.root}/quarantine/{layer}/{name}"

    def landing(self, directory: str = "") -> str:
        """`<root>/landing[/<directory>]`."""
        return f"{self.root}/landing/{directory}".rstrip("/")

    def changes(self, table: str) -> str:
        """`<root>/_changes/<layer>/<name>`: the change log kept beside a `Merge` or `SCD2` table."""
        layer, name = split_table_name(table)
        return f"{self.root}/_changes/{layer}/{name}"

    def meta(self) -> str:
        """`<root>/_meta`: the engine's records."""
        return f"{self.root}/{META}"

    def leases(self, pipeline: str = "") -> str:
        """`<root>/_meta/leases/<pipeline>`: the generations of the pipeline's run lease (of every pipeline's
        without one)."""
        return f"{self.meta()}/leases/{pipeline}".rstrip("/")

    def pins(self) -> str:
        """`<root>/_meta/pins`: pinned table versions, one JSON file per pin."""
        return f"{self.meta()}/pins"

    def features(self) -> str:
        """`<root>/_meta/features`: the feature store's registry, SQLite online store, state and lineage."""
        return f"{self.meta()}/features"

    def feature_state(self) -> str:
        """`<root>/_meta/features/state`: what each feature view's online store holds, as Delta tables."""
        return f"{self.features()}/state"

    def feature_lineage(self) -> str:
        """`<root>/_meta/features/lineage`: the table versions of each retrieval and materialization."""
        return f"{self.features()}/lineage"

    def lineage_events(self) -> str:
        """`<root>/_meta/lineage/events.jsonl`: the OpenLineage events of the `file` transport."""
        return f"{self.meta()}/lineage/events.jsonl"

    def mlflow(self) -> str:
        """`<root>/_meta/mlflow`: the embedded MLflow tracking database and artifacts."""
        return f"{self.meta()}/mlflow"

    def tune(self) -> str:
        """`<root>/_meta/tune`: the results of hyper-parameter searches."""
        return f"{self.meta()}/tune"

    def iceberg_catalog(self) -> str:
        """`<root>/_meta/iceberg/catalog.db`: the root's SQLite Iceberg catalog."""
        return f"{self.meta()}/iceberg/catalog.db"

    def pii_key(self) -> str:
        """`<root>/_meta/secrets/pii.key`: the development PII key generated when none is configured."""
        return f"{self.meta()}/secrets/pii.key"

    def report(self) -> str:
        """`<root>/_meta/report/index.html`: the default place of `medallion report`."""
        return f"{self.meta()}/report/index.html"

    def definitions(self, table: str) -> str:
        """`<root>/_meta/definitions/<table>`: the definitions the table's commits were built by, one JSON file
        per fingerprint."""
        return f"{self.meta()}/definitions/{table}"

    def declarations(self, pipeline: str) -> str:
        """`<root>/_meta/declarations/<pipeline>.json`: what the pipeline's last run declared of its tables."""
        return f"{self.meta()}/declarations/{pipeline}.json"

    def runs(self) -> str:
        """`<root>/_meta/runs`, the run records table."""
        return f"{self.meta()}/runs"

    def quality(self) -> str:
        """`<root>/_meta/quality`, the quality metrics table."""
        return f"{self.meta()}/quality"

    def run_staging(self, run_id: str) -> str:
        """`<root>/_staging/<run_id>`: files written by a run before they are applied."""
        return f"{self.root}/{STAGING}/{run_id}"

    def staging(self, run_id: str, table: str) -> str:
        """`<root>/_staging/<run_id>/<layer>/<name>`: one table's staged files."""
        layer, name = split_table_name(table)
        return f"{self.run_staging(run_id)}/{layer}/{name}"
