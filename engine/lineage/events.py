"""OpenLineage events of table runs: one `COMPLETE` or `FAIL` event per table a run built, with the input
tables (and, for ingested tables, the landing files) at the versions read and the table at the version
committed, sent where `lineage` settings say (a JSON-lines file by default, or an HTTP endpoint).

Datasets follow OpenLineage's naming: namespace `file` and the absolute path for a local root, `s3://bucket`
and the key for an object store; a symlink facet carries the table's logical name (`silver.orders`).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    dataset_version_dataset,
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    processing_engine_run,
    symlinks_dataset,
)
from openlineage.client.transport import Transport
from openlineage.client.transport.console import ConsoleConfig, ConsoleTransport
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import HttpConfig, HttpTransport
from openlineage.client.transport.noop import NoopConfig, NoopTransport

from engine.config import LineageSettings
from engine.layout import Layout
from engine.redact import describe_error, hide, redact_url
from engine.runlog import RunRecord

PRODUCER = "urn:medallion-engine"
RUN_NAMESPACE = uuid.UUID("6d1c1f58-6a3e-4d0a-9a44-6f1a5c1d2e10")
EMITTED = ("succeeded", "failed")
log = logging.getLogger(__name__)


def run_uuid(*parts: str) -> str:
    """A stable UUID for a run (or a table's part of it): OpenLineage run ids must be UUIDs."""
    return str(uuid.uuid5(RUN_NAMESPACE, "/".join(parts)))


def dataset_name(location: str) -> tuple[str, str]:
    """(namespace, name) of a location, by OpenLineage's naming conventions."""
    if "://" in location:
        scheme, _, rest = location.partition("://")
        bucket, _, key = rest.partition("/")
        return f"{scheme}://{bucket}", f"/{key}"
    return "file", location


def table_dataset(layout: Layout, table: str, version: int | None, kind: type[InputDataset] | type[OutputDataset],
                  **extra: Any) -> Any:
    """The dataset of `table` at `version`, with its logical name as a symlink."""
    namespace, name = dataset_name(layout.location(table))
    facets: dict[str, Any] = {"symlinks": symlinks_dataset.SymlinksDatasetFacet(
        identifiers=[symlinks_dataset.Identifier(namespace=layout.root, name=table, type="TABLE")])}
    if version is not None:
        facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=str(version))
    return kind(namespace=namespace, name=name, facets=facets, **extra)


def table_event(layout: Layout, record: RunRecord, namespace: str, landing_files: Sequence[str] = ()) -> RunEvent:
    """The event of one table's part in a run: its inputs at the versions read (and `landing_files`, paths
    under the root, for an ingested table), the table at the version committed with the rows written."""
    facets: dict[str, Any] = {
        "parent": parent_run.ParentRunFacet(run=parent_run.Run(runId=run_uuid(record.run_id)),
                                            job=parent_run.Job(namespace=namespace, name=record.pipeline)),
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=_engine_version(), name="medallion"),
    }
    if record.error:
        facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(message=record.error,
                                                                        programmingLanguage="python")
    inputs = [table_dataset(layout, table, version, InputDataset) for table, version in record.input_versions.items()]
    inputs += [InputDataset(*dataset_name(f"{layout.root}/{path}")) for path in landing_files]
    outputs = []
    if record.output_version is not None:
        statistics = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=record.rows_written)
        outputs.append(table_dataset(layout, record.table, record.output_version, OutputDataset,
                                     outputFacets={"outputStatistics": statistics}))
    return RunEvent(
        eventType=RunState.COMPLETE if record.status == "succeeded" else RunState.FAIL,
        eventTime=record.finished_at.isoformat(),
        run=Run(runId=run_uuid(record.run_id, record.table), facets=facets),
        job=Job(namespace=namespace, name=f"{record.pipeline}.{record.table}", facets={
            "jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="MEDALLION", jobType="TABLE")}),
        inputs=inputs,
        outputs=outputs,
        producer=PRODUCER,
    )


def transport(settings: LineageSettings, root: str) -> Transport:
    """The transport `settings` choose; a file transport on an object-store root needs `lineage.path`.

    The HTTP transport logs its URL and configuration at DEBUG: the URL's secrets and the API key are hidden
    from log records (`engine.redact.hide`) before it is made."""
    if settings.transport == "http" and settings.url is not None:
        url, key = settings.url.get_secret_value(), settings.api_key.get_secret_value() if settings.api_key else None
        hide(url, secret_path=True)
        hide(key)
        auth = {"type": "api_key", "apiKey": key} if key else {}
        return HttpTransport(HttpConfig.from_dict({"url": url, "auth": auth, "timeout": settings.timeout_s}))
    if settings.transport == "console":
        return ConsoleTransport(ConsoleConfig())
    if settings.transport == "file" and (settings.path or "://" not in root):
        path = settings.path or Layout.at(root).lineage_events()
        if "://" not in path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        return FileTransport(FileConfig(log_file_path=path, append=True))
    return NoopTransport(NoopConfig())


def emit(settings: LineageSettings, layout: Layout, records: Iterable[RunRecord],
         landing: dict[str, list[str]] | None = None) -> int:
    """Send the events of `records` that built or failed a table; returns how many were sent. A transport
    failure is logged, never raised: lineage must not fail the run it describes."""
    events = [table_event(layout, r, settings.namespace, (landing or {}).get(r.table, ()))
              for r in records if r.status in EMITTED]
    if not events:
        return 0
    try:
        client = OpenLineageClient(transport=transport(settings, layout.root))
        for event in events:
            client.emit(event)
    except Exception as err:  # noqa: BLE001 - any transport error (I/O, HTTP) is reported, not raised
        log.warning("OpenLineage events of run %s were not sent to %s (%s: %s)",
                    events[0].run.facets["parent"].run.runId, destination(settings, layout.root),
                    type(err).__name__, describe_error(err))
        return 0
    return len(events)


def destination(settings: LineageSettings, root: str) -> str:
    """Where `transport` sends events, fit for a log: an endpoint's URL without credentials, query or path."""
    if settings.transport == "http" and settings.url is not None:
        return redact_url(settings.url.get_secret_value(), secret_path=True)
    if settings.transport == "file":
        return settings.path or Layout.at(root).lineage_events()
    return settings.transport


def _engine_version() -> str:
    try:
        return package_version("medallion-engine")
    except PackageNotFoundError:
        return "dev"
