"""The SQL catalog of a storage root's Iceberg tables: tables loaded by location, and commits built on them.

Every engine commit makes exactly one snapshot (schema changes and the batch marker ride in the same catalog
commit without a snapshot of their own), so versions written by the engine are dense. A batch's marker is
checked against the table the commit is built on, and the catalog's compare-and-swap on the metadata location
refuses a commit built on a stale table; the writer then reloads, checks the marker again (a concurrent commit
of the same batch raises `CommitConflict`) and rebuilds its commit. pyiceberg's own rebasing retries are
switched off (`commit.retry.num-retries` = 0) because they would skip that check.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

import pyarrow as pa
from deltalake.transaction import Transaction

from engine.errors import CommitConflict, TableFailed, TableFormatError
from engine.layout import Layout
from engine.storage import iceberg_io_properties, is_local
from engine.tables.delta import conflict
from engine.tables.iceberg.schema import nullable
from engine.tables.iceberg.snapshots import MARKER_PREFIX, committed_batch, version_of

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table
    from pyiceberg.table import Transaction as IcebergTransaction

log = logging.getLogger(__name__)

CATALOG_NAME = "medallion"
TABLE_PROPERTIES = {"commit.retry.num-retries": "0", "format-version": "2"}
METRICS_PREFIX = "write.metadata.metrics.column."
ATTEMPTS = 8


def without_metrics(columns: Collection[str]) -> dict[str, str]:
    """Table properties that keep `columns` out of the column metrics (counts and bounds) of manifest entries."""
    return {f"{METRICS_PREFIX}{name}": "none" for name in sorted(columns)}


_OPENING = threading.Lock()
"""Held while a catalog is opened: opening creates the catalog's own tables when they are missing, and two
opened at once (tables of a run built together) would both try to create them."""


class IcebergCatalog:
    """The Iceberg tables of one storage root, registered in one SQL catalog: namespace = layer, table name =
    name, location `<root>/<layer>/<name>`.

    Args:
        root: the absolute storage root (the catalog's warehouse).
        catalog_uri: SQLAlchemy URI of the catalog; SQLite under the root when None.
    """

    def __init__(self, root: str, catalog_uri: str | None = None) -> None:
        self.root = root.rstrip("/")
        self._catalog_uri = catalog_uri
        self._catalog: SqlCatalog | None = None
        self._lock = threading.Lock()

    @property
    def catalog(self) -> SqlCatalog:
        """The SQL catalog, created on first use (the SQLite file and its folder too)."""
        with self._lock:
            if self._catalog is None:
                from pyiceberg.catalog.sql import SqlCatalog

                if self._catalog_uri is None and not is_local(self.root):
                    raise TableFormatError(
                        f"storage root `{self.root}` is remote, so the default SQLite Iceberg catalog cannot live "
                        "there; set storage.iceberg_catalog_uri (MEDALLION__STORAGE__ICEBERG_CATALOG_URI) to a "
                        "PostgreSQL catalog shared by every writer, e.g. postgresql+psycopg://user@host/catalog")
                uri = self._catalog_uri or f"sqlite:///{Layout.at(self.root).iceberg_catalog()}"
                if uri.startswith("sqlite:///"):
                    os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")), exist_ok=True)
                warehouse = self.root if "://" in self.root else f"file://{self.root}"
                with _OPENING:
                    self._catalog = SqlCatalog(CATALOG_NAME, uri=uri, warehouse=warehouse, **iceberg_io_properties())
            return self._catalog

    def identifier(self, uri: str) -> tuple[str, str]:
        """`(layer, name)` of the table at `<root>/<layer>/<name>`."""
        layer, name = uri.rstrip("/").split("/")[-2:]
        return layer, name

    def load(self, uri: str) -> Table | None:
        """The table the catalog holds for `uri`, None when it holds none.

        Raises:
            TableFailed: the catalog's table of that name lives at another location.
        """
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        try:
            table = self.catalog.load_table(self.identifier(uri))
        except (NoSuchTableError, NoSuchNamespaceError):
            return None
        if _plain_location(table.location()) != _plain_location(uri):
            raise TableFailed(
                f"Iceberg table `{'.'.join(self.identifier(uri))}` of the catalog lives at `{table.location()}`, "
                f"not at `{uri}`; give this root a catalog of its own (`storage.iceberg_catalog_uri`)",
                table=".".join(self.identifier(uri)), path=uri)
        return table

    def commit(
        self,
        uri: str,
        schema: pa.Schema | None,
        transaction: Transaction | None,
        build: Callable[[IcebergTransaction, bool], None],
        table_properties: Mapping[str, str] | None = None,
    ) -> int | None:
        """Build a commit on the current table (or a new one from `schema`) and commit it, rebuilding it on a
        fresh table when another writer got in first; returns the new version. `table_properties` are set first,
        in the same commit."""
        from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError, ValidationError

        table_name = ".".join(self.identifier(uri))
        for attempt in range(1, ATTEMPTS + 1):
            loaded = self.load(uri)
            if loaded is not None and transaction is not None:
                committed = committed_batch(loaded, transaction.app_id)
                if committed is not None and committed >= transaction.version:
                    raise conflict(uri, transaction, committed)
            created = loaded is None
            tx: IcebergTransaction
            if created:
                if schema is None:
                    return None
                self._ensure_namespace(self.identifier(uri)[0])
                tx = self.catalog.create_table_transaction(
                    self.identifier(uri), schema=nullable(schema), location=uri,
                    properties=TABLE_PROPERTIES | dict(table_properties or {}))
            else:
                assert loaded is not None
                tx = loaded.transaction()
                changed = {k: v for k, v in (table_properties or {}).items() if loaded.metadata.properties.get(k) != v}
                if changed:
                    tx.set_properties(changed)
                _warn_of_earlier_metrics(table_name, loaded, changed)
            if transaction is not None:
                tx.set_properties({MARKER_PREFIX + transaction.app_id: str(transaction.version)})
            try:
                build(tx, created)
            except (ValueError, TypeError, ValidationError) as err:
                raise TableFailed(f"table `{table_name}`: the Iceberg commit cannot be built: {err}",
                                  table=table_name, path=uri) from err
            try:
                committed_table = tx.commit_transaction()
            except (CommitFailedException, TableAlreadyExistsError) as err:
                log.info("table `%s`: commit attempt %d lost to a concurrent commit (%s); retrying",
                         table_name, attempt, err)
                continue
            snapshot = committed_table.current_snapshot()
            return None if snapshot is None else version_of(snapshot)
        error = CommitConflict(
            f"table `{table_name}` kept changing under this commit ({ATTEMPTS} attempts); this writer's work was "
            "discarded; run again", table=table_name, path=uri)
        raise error


    def _ensure_namespace(self, namespace: str) -> None:
        """Create the namespace (a layer) unless it exists. Two tables of a layer created at once race to create
        it: the SQL catalog refuses the second insert (an integrity error, which pyiceberg does not turn into
        "already exists"), and that is no failure once the namespace is there."""
        from sqlalchemy.exc import IntegrityError

        try:
            self.catalog.create_namespace_if_not_exists(namespace)
        except IntegrityError:
            if not self.catalog.namespace_exists(namespace):
                raise


def _plain_location(location: str) -> str:
    return location.removeprefix("file://").rstrip("/")


def _warn_of_earlier_metrics(table: str, loaded: Table, changed: Mapping[str, str]) -> None:
    """Warn when columns are kept out of the metrics of a table whose earlier files' manifests hold theirs."""
    hidden = [k.removeprefix(METRICS_PREFIX) for k, v in changed.items() if k.startswith(METRICS_PREFIX) and v == "none"]
    if hidden and loaded.current_snapshot() is not None:
        log.warning("table `%s`: columns %s are kept out of column metrics from this commit on, but the manifests of "
                    "the files committed before still hold their counts and bounds; rebuild the table (`medallion "
                    "run PIPELINE --full-refresh --select %s`) and expire its older snapshots with the catalog's "
                    "tools", table, ", ".join(f"`{c}`" for c in hidden), table)
