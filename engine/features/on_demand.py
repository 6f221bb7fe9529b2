"""On-demand feature views computed in Ray tasks, block by block, by Feast's own code: each block is handed to
Feast as an already collected result, whose `to_arrow` adds the views' columns as it does to a whole one. The
views' transformations are row-wise, so a block's rows get the values the whole result's would."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import pyarrow as pa
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.on_demand_feature_view import OnDemandFeatureView


class _Collected(RetrievalJob):
    """A retrieval result already in this process."""

    def __init__(self, rows: pa.Table, views: Sequence[OnDemandFeatureView], full_feature_names: bool,
                 metadata: RetrievalMetadata | None) -> None:
        self._rows = rows
        self._views = list(views)
        self._full_feature_names = full_feature_names
        self._metadata = metadata

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return self._views

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return self._rows

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._rows.to_pandas()


def with_on_demand_features(rows: pa.Table, views: Sequence[OnDemandFeatureView], full_feature_names: bool,
                            metadata: RetrievalMetadata | None) -> pa.Table:
    """`rows` with the columns of the on-demand `views` requested in `metadata` appended, as Feast computes them
    on a collected result."""
    return _Collected(rows, views, full_feature_names, metadata).to_arrow()
