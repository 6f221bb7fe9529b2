"""Checks a run makes before it creates anything under the storage root."""

from __future__ import annotations

from engine.errors import IngestError
from engine.ingest.discovery import discover
from engine.ingest.sources import FileSource
from engine.layout import Layout
from engine.pipeline import Pipeline
from engine.status import list_tables


def require_landing(pipeline: Pipeline, layout: Layout) -> None:
    """Refuse a root where the pipeline has nothing to work on: none of its sources has a landing file and none
    of its tables exists (an empty or mistyped root).

    Raises:
        IngestError: naming the landing folder, the command that fills it, and `--root`.
    """
    sources = [d.source for d in pipeline.tables.values() if isinstance(d.source, FileSource)]
    if len(sources) < sum(d.source is not None for d in pipeline.tables.values()):
        return  # a database source always has something to read
    if not sources or any(discover(layout.landing(s.directory), s) for s in sources):
        return
    if set(pipeline.tables) & set(list_tables(layout)):
        return
    raise IngestError(f"no landing files under {layout.landing()}; run `medallion generate {pipeline.name}` or "
                      "point --root at your lakehouse", path=layout.landing())
