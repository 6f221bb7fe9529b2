"""Whether a table must be rebuilt because its definition, or the meaning of an input, changed since it was built.

A derived table is rebuilt (emptied and computed from its inputs in full) when:

- its own definition changed (`engine.changes.classify`), breaking or not (a `forward-only` change rebuilds
  nothing);
- an input changed meaning since it was built: the input's epoch differs from the one recorded (a breaking
  rebuild upstream, in this run or an earlier one that did not reach this table);
- its code names a column an input's non-breaking rebuild added.

An input's non-breaking rebuild that the table does not read is skipped over: it left the rows of the columns the
table reads as they were, so the table takes the rebuilt version as consumed and reads on from there. A table
built before definitions were recorded adopts its current definition without a rebuild. Ingested (bronze)
tables are never rebuilt by a definition change: new landing files are read with the new definition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from engine.changes.classify import ChangeCategory, DefinitionChange, compare
from engine.changes.fingerprint import DefinitionParts, definition_parts, digest
from engine.changes.recorded import Rebuilt, RecordedDefinition, load_parts, recorded_definition
from engine.layout import Layout
from engine.pipeline import TableDefinition
from engine.tables.formats import TableStore


@dataclass(frozen=True)
class Assessment:
    """A table's definition against what its rows were built by.

    Attributes:
        parts: its current definition.
        recorded: what its newest commit records, None when nothing does.
        input_epochs: the current epoch of each input that records one.
        change: how its own definition changed; None when it did not, or nothing was recorded.
        upstream: an input whose meaning changed since the table was built.
        reads_added: an input and the columns its non-breaking rebuild added that this table's code names.
        skipped: inputs whose non-breaking rebuild this table does not read, with the version to read on from.
    """

    definition: TableDefinition
    parts: DefinitionParts
    recorded: RecordedDefinition | None
    input_epochs: Mapping[str, str] = field(default_factory=dict)
    change: DefinitionChange | None = None
    upstream: str | None = None
    reads_added: tuple[str, tuple[str, ...]] | None = None
    skipped: Mapping[str, int] = field(default_factory=dict)

    @property
    def rebuild(self) -> bool:
        """Whether the table is rebuilt in full (never an ingested table)."""
        own = self.change is not None and self.change.kind != "forward-only"
        return self.definition.source is None and (own or self.upstream is not None or self.reads_added is not None)

    @property
    def expected_non_breaking(self) -> bool:
        """Whether the rebuild is expected to keep the rows of the existing columns: no input changed meaning and
        the definition's change, if any, is non-breaking."""
        return self.upstream is None and (self.change is None or self.change.kind == "non-breaking")

    @property
    def reason(self) -> str:
        """Why the table is rebuilt, or why a changed ingested table is not; empty when nothing changed."""
        if self.definition.source is not None:
            return (f"{self.change.describe()}; an ingested table is not rebuilt (its landing files may be gone): "
                    "new files are read with the new definition") if self.change else ""
        if self.change is not None and (self.change.kind != "forward-only" or not self.rebuild):
            return self.change.describe()
        if self.upstream is not None:
            return f"input `{self.upstream}` changed meaning since the table was built (breaking)"
        if self.reads_added is not None:
            table, columns = self.reads_added
            return f"reads column(s) {', '.join(f'`{c}`' for c in columns)} that input `{table}` added"
        return ""

    def commit_value(self, run_id: str, before: int | None, *, reingested: bool = False) -> RecordedDefinition:
        """The definition the table's next commit records: after a rebuild (or an ingested table's full refresh),
        a new epoch (breaking until `confirmed` says otherwise) and the version it started from."""
        epoch = self.recorded.epoch if self.recorded is not None else self.parts.fingerprint
        if not self.rebuild and not reingested:
            return RecordedDefinition(self.parts.fingerprint, epoch, self.input_epochs)
        return RecordedDefinition(self.parts.fingerprint, digest(self.parts.fingerprint + run_id), self.input_epochs,
                                  Rebuilt("breaking", before))

    def confirmed(self, before: int | None, added: tuple[str, ...]) -> RecordedDefinition:
        """The definition a non-breaking rebuild's confirming commit records: the epoch it had before."""
        epoch = self.recorded.epoch if self.recorded is not None else self.parts.fingerprint
        return RecordedDefinition(self.parts.fingerprint, epoch, self.input_epochs,
                                  Rebuilt("non-breaking", before, added))


def assess(
    definition: TableDefinition,
    layout: Layout,
    store_of: Callable[[str], TableStore],
    consumed: Mapping[str, int | None] | None,
    override: ChangeCategory | None = None,
) -> Assessment:
    """The assessment of `definition` against its table's newest commits; `consumed` are the input versions the
    table was last built from (None: never built)."""
    parts = definition_parts(definition)
    recorded = recorded_definition(layout.table(definition.name), definition.name, store_of(definition.name))
    inputs = {t: recorded_definition(layout.table(t), t, store_of(t)) for t in definition.inputs}
    epochs = {t: r.epoch for t, r in inputs.items() if r is not None}
    if recorded is None:
        return Assessment(definition, parts, None, epochs)
    change = None
    if recorded.fingerprint != parts.fingerprint:
        change = compare(load_parts(layout, definition.name, recorded.fingerprint), parts, override)
    upstream = next((t for t, epoch in epochs.items()
                     if t in recorded.inputs and recorded.inputs[t] != epoch), None)
    names = parts.names()
    reads_added, skipped = None, {}
    for table, input_recorded in inputs.items():
        rebuilt = input_recorded.rebuilt if input_recorded is not None else None
        if rebuilt is None or rebuilt.change != "non-breaking" or consumed is None \
                or consumed.get(table) is None or rebuilt.before != consumed.get(table):
            continue
        read = tuple(c for c in rebuilt.added if c in names)
        if read:
            reads_added = reads_added or (table, read)
        elif input_recorded is not None and input_recorded.version is not None:
            skipped[table] = input_recorded.version
    return Assessment(definition, parts, recorded, epochs, change, upstream, reads_added, skipped)

