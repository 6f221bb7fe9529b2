"""The pipeline graph as inline SVG: landing folders and tables in columns by depth, edges from each input
to its reader, every table coloured by the status of its latest run and outlined when it is late. The drawing
scales down to the width of the page, never wider than its natural size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from engine.report.data import NEVER_RUN, TableReport

NODE_WIDTH, NODE_HEIGHT = 200, 40
COLUMN_GAP, ROW_GAP, MARGIN = 70, 14, 10

STATUS_COLOURS = {
    "succeeded": ("#e6f4ea", "#1e7b34"),
    "unchanged": ("#e8f0fe", "#1a56c4"),
    "failed": ("#fce8e6", "#c5221f"),
    "skipped": ("#f1f3f4", "#5f6368"),
    "interrupted": ("#fdecd8", "#b45309"),
    NEVER_RUN: ("#ffffff", "#9aa0a6"),
    "landing": ("#fef7e0", "#a06a00"),
}
LATE_OUTLINE = "#e8710a"
LAYER_COLUMNS = {"bronze": 1, "silver": 2, "gold": 3}


@dataclass(frozen=True)
class Node:
    """One box of the graph."""

    name: str
    status: str
    late: bool
    href: str | None
    column: int
    row: int

    @property
    def x(self) -> int:
        return MARGIN + self.column * (NODE_WIDTH + COLUMN_GAP)

    @property
    def y(self) -> int:
        return MARGIN + self.row * (NODE_HEIGHT + ROW_GAP)


def layout(tables: Sequence[TableReport]) -> tuple[list[Node], list[tuple[str, str]]]:
    """Nodes placed in columns by layer and depth (landing folders first, no table left of its inputs or of
    its layer's first column) and rows ordered by the mean row of their inputs, to keep edges short; and the
    edges as (input, reader) names."""
    known = {t.name: t for t in tables}
    inputs = {t.name: [u for u in t.entry.upstream if u in known or u.startswith("landing/")] for t in tables}
    depth: dict[str, int] = {}

    def depth_of(name: str) -> int:
        if name not in depth:
            after_inputs = 1 + max((depth_of(u) for u in inputs.get(name, ())), default=-1)
            depth[name] = max(after_inputs, LAYER_COLUMNS.get(name.split(".", 1)[0], 0))
        return depth[name]

    names = list(dict.fromkeys([u for t in tables for u in inputs[t.name] if u not in known] + list(known)))
    columns: dict[int, list[str]] = {}
    for name in names:
        columns.setdefault(depth_of(name), []).append(name)
    rows: dict[str, float] = {}
    for column in sorted(columns):
        members = columns[column]
        if column > 0:
            members.sort(key=lambda n: sum(rows[u] for u in inputs[n]) / max(len(inputs[n]), 1))
        rows.update({name: float(index) for index, name in enumerate(members)})
    nodes = []
    for name in names:
        table = known.get(name)
        late = table is not None and table.entry.freshness is not None and table.entry.freshness.state == "late"
        nodes.append(Node(name=name, status=table.last_status if table else "landing", late=late,
                          href=f"#{table.anchor}" if table else None, column=depth[name], row=int(rows[name])))
    edges = [(u, t.name) for t in tables for u in inputs[t.name]]
    return nodes, edges


def render(tables: Sequence[TableReport]) -> str:
    """The graph of `tables` as an `<svg id="pipeline-graph">` element."""
    nodes, edges = layout(tables)
    if not nodes:
        return '<p class="empty">No tables yet.</p>'
    by_name = {n.name: n for n in nodes}
    width = max(n.x for n in nodes) + NODE_WIDTH + MARGIN
    height = max(n.y for n in nodes) + NODE_HEIGHT + MARGIN
    parts = [f'<svg id="pipeline-graph" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'style="width: 100%; max-width: {width}px; height: auto" role="img" aria-label="pipeline graph">']
    for source, target in edges:
        a, b = by_name[source], by_name[target]
        x1, y1 = a.x + NODE_WIDTH, a.y + NODE_HEIGHT / 2
        x2, y2 = b.x, b.y + NODE_HEIGHT / 2
        middle = (x1 + x2) / 2
        parts.append(f'<path class="edge" data-from="{escape(source)}" data-to="{escape(target)}" '
                     f'd="M{x1},{y1} C{middle},{y1} {middle},{y2} {x2},{y2}" fill="none" stroke="#9aa0a6" '
                     'stroke-width="1.3"/>')
    for node in nodes:
        fill, stroke = STATUS_COLOURS.get(node.status, STATUS_COLOURS[NEVER_RUN])
        outline = LATE_OUTLINE if node.late else stroke
        label = node.status + (", late" if node.late else "")
        box = (f'<g class="node" data-table="{escape(node.name)}" data-status="{escape(node.status)}" '
               f'data-late="{str(node.late).lower()}"><title>{escape(node.name)}: {escape(label)}</title>'
               f'<rect x="{node.x}" y="{node.y}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="6" '
               f'fill="{fill}" stroke="{outline}" stroke-width="{3 if node.late else 1.5}"/>'
               f'<text x="{node.x + 10}" y="{node.y + 17}" font-size="12" font-weight="600" fill="#202124">'
               f'{escape(_short(node.name))}</text>'
               f'<text x="{node.x + 10}" y="{node.y + 32}" font-size="11" fill="{stroke}">{escape(label)}</text>'
               '</g>')
        parts.append(f'<a href="{node.href}">{box}</a>' if node.href else box)
    parts.append("</svg>")
    return "".join(parts)


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
