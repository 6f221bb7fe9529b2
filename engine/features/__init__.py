"""The Feast feature-store bridge: Delta-backed feature views served offline on Ray and online from Feast.

Nothing here is imported by `import engine`; Feast is imported only by the modules that need it. The names
below are loaded on first use, so `from engine.features import DeltaSource` works in a feature repository.
"""

from __future__ import annotations

from engine.lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "DeltaSource": "engine.features.source",
    "at_versions": "engine.features.snapshot",
    "open_store": "engine.features.repo",
    "load_definitions": "engine.features.repo",
    "apply_repo": "engine.features.repo",
})
