"""The Feast feature-store bridge: Delta-backed feature views served offline on Ray and online from Feast.

Nothing here is imported by `import engine`; Feast is imported only by the modules that need it. The names
below are loaded on first use, so `from engine.features import DeltaSource` works in a feature repository.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import lazy_exports

if TYPE_CHECKING:  # what type checkers see: the names below, from the modules that define them
    from engine.features.repo import apply_repo as apply_repo
    from engine.features.repo import load_definitions as load_definitions
    from engine.features.repo import open_store as open_store
    from engine.features.snapshot import at_versions as at_versions
    from engine.features.source import DeltaSource as DeltaSource

__getattr__ = lazy_exports(__name__, {
    "DeltaSource": "engine.features.source",
    "at_versions": "engine.features.snapshot",
    "open_store": "engine.features.repo",
    "load_definitions": "engine.features.repo",
    "apply_repo": "engine.features.repo",
})
