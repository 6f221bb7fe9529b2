"""Where tables live under the storage root."""

from __future__ import annotations

import os
from dataclasses import dataclass

from engine.names import split_table_name


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

    def leases(self, pipeline: str) -> str:
        """`<root>/_meta/leases/<pipeline>`: the generations of the pipeline's run lease."""
        return f"{self.root}/_meta/leases/{pipeline}"

    def definitions(self, table: str) -> str:
        """`<root>/_meta/definitions/<table>`: the definitions the table's commits were built by, one JSON file
        per fingerprint."""
        return f"{self.root}/_meta/definitions/{table}"

    def declarations(self, pipeline: str) -> str:
        """`<root>/_meta/declarations/<pipeline>.json`: what the pipeline's last run declared of its tables."""
        return f"{self.root}/_meta/declarations/{pipeline}.json"

    def runs(self) -> str:
        """`<root>/_meta/runs`, the run records table."""
        return f"{self.root}/_meta/runs"

    def quality(self) -> str:
        """`<root>/_meta/quality`, the quality metrics table."""
        return f"{self.root}/_meta/quality"

    def run_staging(self, run_id: str) -> str:
        """`<root>/_staging/<run_id>`: files written by a run before they are applied."""
        return f"{self.root}/_staging/{run_id}"

    def staging(self, run_id: str, table: str) -> str:
        """`<root>/_staging/<run_id>/<layer>/<name>`: one table's staged files."""
        layer, name = split_table_name(table)
        return f"{self.run_staging(run_id)}/{layer}/{name}"
