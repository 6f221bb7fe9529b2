"""Fixtures of the object-store tests: a real S3 HTTP endpoint (moto's server) on 127.0.0.1, the environment
pointing at it, and helpers to run `medallion` against it and read what the engine wrote there."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import polars as pl
import pytest
from deltalake import DeltaTable

BUCKET = "lake"
UNSAFE = ("AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_CONDITIONAL_PUT", "AWS_S3_LOCKING_PROVIDER", "AWS_PROFILE",
          "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A moto S3 server on a free local port with the bucket `lake`, and the process environment pointing at it
    (the variables are also returned, for subprocesses). The server runs in its own process: some delta-rs calls
    (`DeltaTable.is_deltatable`) keep the GIL while they wait for the endpoint, so an in-process server
    (`ThreadedMotoServer`) could not answer them."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "moto_server did not start"
            time.sleep(0.1)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true",
           "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name in UNSAFE:
                patch.delenv(name, raising=False)
            for name, value in env.items():
                patch.setenv(name, value)
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def subprocess_env(s3: dict[str, str]) -> dict[str, str]:
    """The environment of a `medallion` process on the endpoint; it tokenizes with this process's PII key (the
    key of the session's `retail_build`), so that their tables compare."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return keep | s3 | {"RAY_AUTH_MODE": "disabled", "MEDALLION__RAY__NUM_CPUS": "2",
                        "MEDALLION_PII_KEY": os.environ.get("MEDALLION_PII_KEY", "test-pii-key")}


def medallion(root: str, env: dict[str, str], *args: str) -> str:
    """`medallion --root root ARGS` in a process of its own with `env`, which must succeed; its output."""
    command = [str(Path(sys.executable).with_name("medallion")), "--root", root, *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def delta_rows(uri: str) -> pl.DataFrame:
    """The rows of the Delta table at `uri`, without the `_` columns, sorted by every column."""
    frame = pl.from_arrow(DeltaTable(uri).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    columns = [c for c in frame.columns if not c.startswith("_")]
    return frame.select(columns).sort(columns)


def object_keys(prefix: str) -> list[str]:
    """The keys of the bucket's objects under `prefix`, listed through boto3."""
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def iceberg_rows(catalog: str, table: str) -> pl.DataFrame:
    from pyiceberg.catalog.sql import SqlCatalog

    from engine.storage import iceberg_io_properties

    frame = pl.from_arrow(SqlCatalog("medallion", uri=catalog, **iceberg_io_properties())
                          .load_table(tuple(table.split("."))).scan().to_arrow())
    assert isinstance(frame, pl.DataFrame)
    return comparable(frame)


def comparable(frame: pl.DataFrame) -> pl.DataFrame:
    """The columns not starting with `_`, in name order, rows sorted by the exact columns before the floats
    (whose last bits may differ between runs)."""
    columns = sorted(c for c in frame.columns if not c.startswith("_"))
    floats = [c for c in columns if frame.schema[c].is_float()]
    return frame.select(columns).sort([c for c in columns if c not in floats] + floats)
