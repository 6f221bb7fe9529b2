"""The retail demo on Iceberg tables on S3 object storage, through a PostgreSQL catalog, against a real S3 HTTP
endpoint (moto's server) on 127.0.0.1 (see conftest.py): its gold is the gold of the Delta run of the same data.

A file of its own, apart from test_s3.py (whose module runs the demo on Delta tables on the endpoint), so that the
two runs of the demo can go to different test processes. The Delta run it is compared with is the session's
`retail_build` on a local root, which test_s3.py finds equal to the demo's Delta tables on the endpoint.
"""

from __future__ import annotations

import pytest
from polars.testing import assert_frame_equal

from engine.storage import delta_tables_under
from tests.conftest import RETAIL_AS_OF, RETAIL_TEST_SCALE, RetailBuild
from tests.storage.conftest import BUCKET, comparable, delta_rows, iceberg_rows, medallion, subprocess_env

pytestmark = pytest.mark.services


@pytest.mark.slow
def test_the_retail_pipeline_on_iceberg_on_s3_gives_the_gold_of_the_delta_run(
        s3: dict[str, str], retail_build: RetailBuild, postgres_catalog: str) -> None:
    root = f"s3://{BUCKET}/retail-iceberg"
    env = subprocess_env(s3) | {"MEDALLION__STORAGE__TABLE_FORMAT": "iceberg",
                                 "MEDALLION__STORAGE__ICEBERG_CATALOG_URI": postgres_catalog}
    medallion(root, env, "demo", "--scale", str(RETAIL_TEST_SCALE), "--as-of", RETAIL_AS_OF.isoformat())
    assert not delta_tables_under(root, skip=("_meta", "landing", "quarantine", "_changes"))
    for table in ("gold.customer_features", "gold.customer_daily", "gold.fct_order_lines", "gold.dim_customer",
                  "gold.dim_product"):
        delta_gold = comparable(delta_rows(f"{retail_build.root}/{table.replace('.', '/')}"))
        assert_frame_equal(iceberg_rows(postgres_catalog, table), delta_gold, check_exact=False, rel_tol=1e-9,
                           abs_tol=1e-9)
