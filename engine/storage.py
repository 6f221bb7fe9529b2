"""Object storage: the one place that knows how a storage root on S3 is reached and checked.

delta-rs, pyarrow and Ray workers all read the standard AWS variables of the process environment (`S3_ENV`);
nothing is passed as `storage_options`. This module builds filesystems from a root, deletes and lists through
them, hands the variables to Ray workers, and refuses, before anything is written, a root that is
unreachable, has no bucket, has no credentials, or is configured unsafely for concurrent writers.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from engine.errors import StorageError
from engine.redact import redact_url

if TYPE_CHECKING:
    import pyarrow.dataset as pads

S3_SCHEMES = ("s3", "s3a")
# Read by delta-rs (object_store's `AmazonS3Builder::from_env`, deltalake_aws) and by the AWS SDK under pyarrow.
S3_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ALLOW_HTTP",
    "AWS_CONDITIONAL_PUT", "AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_S3_LOCKING_PROVIDER", "AWS_EC2_METADATA_DISABLED",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
)
# The secrets among them: passed to a cluster's workers only when `ray.forward_credentials` asks for it.
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Any one of these lets the AWS SDKs find credentials without static keys.
_CREDENTIAL_SOURCES = ("AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                       "AWS_CONTAINER_CREDENTIALS_FULL_URI")
ALLOW_UNSAFE_SETTING = "storage.allow_unsafe_writes (MEDALLION__STORAGE__ALLOW_UNSAFE_WRITES=true)"


def is_s3(uri: str) -> bool:
    """Whether `uri` is on S3 (or an S3-compatible endpoint)."""
    return urlparse(uri).scheme in S3_SCHEMES


def is_local(uri: str) -> bool:
    """Whether `uri` is a local path (no scheme, or `file://`)."""
    return "://" not in uri or uri.startswith("file://")


def filesystem_of(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of `uri` and the path inside it. On S3 the AWS SDK reads `S3_ENV` (pyarrow 25
    honours `AWS_ENDPOINT_URL`); credentials never appear in the URI. A relative local path is taken from the
    working directory."""
    return pafs.FileSystem.from_uri(os.path.abspath(uri) if "://" not in uri else uri)


def parquet_dataset(files: Sequence[str], **options: Any) -> pads.Dataset:
    """A dataset over Parquet `files` given as local paths or URIs of one filesystem (pyarrow accepts a list
    of paths only, not of URIs)."""
    import pyarrow.dataset as pads

    if not files:
        return pads.dataset([], **options)
    filesystem, _ = filesystem_of(files[0])
    return pads.dataset([filesystem_of(f)[1] for f in files], filesystem=filesystem, **options)


def delete_tree(uri: str) -> None:
    """Delete the folder `uri` and everything below it; a missing folder is fine."""
    fs, path = filesystem_of(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_dir(path)


def delete_file(uri: str) -> None:
    """Delete the file at `uri`; a missing file is fine."""
    fs, path = filesystem_of(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def exists(uri: str) -> bool:
    """Whether anything (a file, or a folder holding files) is at `uri`."""
    fs, path = filesystem_of(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def files_under(uri: str) -> Iterator[str]:
    """Paths, relative to `uri`, of every file below it."""
    fs, path = filesystem_of(uri)
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            yield info.path.removeprefix(path).lstrip("/")


def delta_tables_under(uri: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Every Delta table (a folder holding `_delta_log`) below `uri`, not descending into tables nor into the
    top-level folders named in `skip`. One listing per folder: cheap on object storage."""
    fs, base = filesystem_of(uri)
    found, pending = [], [base]
    while pending:
        folder = pending.pop()
        children = [i for i in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
                    if i.type == pafs.FileType.Directory]
        if any(c.base_name == "_delta_log" for c in children):
            found.append(uri + folder.removeprefix(base))
            continue
        pending.extend(c.path for c in children if not (folder == base and c.base_name in skip))
    return sorted(found)


def upload(local_folder: str, uri: str) -> None:
    """Copy a local folder's files to `uri` (replacing files of the same name)."""
    fs, path = filesystem_of(uri)
    pafs.copy_files(local_folder, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def iceberg_io_properties() -> dict[str, str]:
    """pyiceberg FileIO properties for the endpoint and region of the AWS variables: pyiceberg builds its S3
    filesystem from catalog properties, not from these variables (credentials it leaves to the AWS SDK's
    default chain, which reads the environment)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return {key: value for key, value in (("s3.endpoint", endpoint), ("s3.region", region)) if value}


def worker_env(*, credentials: bool = True) -> dict[str, str]:
    """The storage variables of this process, for the `runtime_env` of a cluster's Ray workers (they do not
    inherit the driver's environment); without the secret ones (`CREDENTIAL_ENV`) unless `credentials`."""
    return {name: os.environ[name] for name in S3_ENV
            if name in os.environ and (credentials or name not in CREDENTIAL_ENV)}


def _true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _bucket(root: str) -> str:
    return urlparse(root).netloc


def unsafe_configuration() -> str | None:
    """Why the environment makes Delta commits on S3 unsafe with concurrent writers, or None.

    deltalake 1.6 commits a version by writing `_delta_log/<version>.json` with a conditional PUT
    (`If-None-Match: *`), so of two writers of the same version exactly one succeeds and the other retries
    on top of it. That is off, or was asked to be, when:
    """
    if _true("AWS_S3_ALLOW_UNSAFE_RENAME"):
        return ("AWS_S3_ALLOW_UNSAFE_RENAME=true opts out of mutual exclusion between writers; unset it "
                "(deltalake commits with conditional PUTs, which the endpoint must support)")
    mode = os.environ.get("AWS_CONDITIONAL_PUT", "etag").strip().lower()
    if mode != "etag":
        return (f"AWS_CONDITIONAL_PUT={mode} turns off the conditional PUT (If-None-Match) that makes Delta "
                "commits atomic; unset it or set it to `etag`")
    if os.environ.get("AWS_S3_LOCKING_PROVIDER"):
        return ("AWS_S3_LOCKING_PROVIDER is set, but deltalake 1.6 no longer supports the DynamoDB locking "
                "provider and ignores it; unset it: commits use conditional PUTs, which the endpoint must support")
    return None


def _credentials_missing() -> bool:
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return False
    if any(os.environ.get(name) for name in _CREDENTIAL_SOURCES):
        return False
    files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
             os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")]
    if any(os.path.isfile(os.path.expanduser(f)) for f in files):
        return False
    return _true("AWS_EC2_METADATA_DISABLED")  # else an instance role may provide them


def check_root(root: str, *, allow_unsafe_writes: bool = False) -> None:
    """Refuse an S3 root the engine cannot use safely; a local root passes. Checked once per process and root.

    Raises:
        StorageError: naming the root, the bucket and what to set: no credentials, an `http://` endpoint without
            `AWS_ALLOW_HTTP=true`, a configuration unsafe for concurrent writers (unless `allow_unsafe_writes`),
            an endpoint that cannot be reached, a bucket that does not exist or cannot be accessed.
    """
    if is_s3(root):
        _check_s3(root.rstrip("/"), allow_unsafe_writes, tuple(worker_env(credentials=True).items()))


@functools.lru_cache(maxsize=32)
def _check_s3(root: str, allow_unsafe_writes: bool, _env: tuple[tuple[str, str], ...]) -> None:
    bucket = _bucket(root)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    where = f"storage root `{redact_url(root)}` (bucket `{bucket}`, endpoint {redact_url(endpoint or 'AWS S3')})"
    if _credentials_missing():
        raise StorageError(f"no credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                           "AWS_PROFILE, a web identity, or an instance role)", path=root)
    if endpoint and endpoint.startswith("http://") and not _true("AWS_ALLOW_HTTP"):
        raise StorageError(f"{where} is plain HTTP: set AWS_ALLOW_HTTP=true (delta-rs refuses http:// otherwise)",
                           path=root)
    reason = unsafe_configuration()
    if reason and not allow_unsafe_writes:
        raise StorageError(f"unsafe for concurrent writers at {where}: {reason}; or, with a single writer only, "
                           f"set {ALLOW_UNSAFE_SETTING}", path=root)
    try:
        fs, _ = filesystem_of(root)
        info = fs.get_file_info(bucket)
    except OSError as err:
        raise _translated(err, where, root) from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"bucket `{bucket}` of {where} does not exist: create it, or fix --root / "
                           "MEDALLION__STORAGE__ROOT (and AWS_ENDPOINT_URL when it is not AWS S3)", path=root)


def _translated(err: OSError, where: str, root: str) -> StorageError:
    text = str(err)
    if any(s in text for s in ("NETWORK_CONNECTION", "Could not connect", "curlCode", "Couldn't resolve")):
        return StorageError(f"cannot reach the endpoint of {where}: check AWS_ENDPOINT_URL (and AWS_REGION) "
                            f"and the network ({text.splitlines()[0]})", path=root)
    if any(s in text for s in ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                               "403", "credentials")):
        return StorageError(f"access denied to {where}: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the "
                            f"role) and the bucket policy ({text.splitlines()[0]})", path=root)
    return StorageError(f"cannot use {where}: {text.splitlines()[0]}", path=root)


def read_bytes(uri: str) -> bytes | None:
    """The content of the file at `uri`, None when there is none."""
    fs, path = filesystem_of(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        return None


def write_bytes(uri: str, data: bytes) -> None:
    """Write the file at `uri` whole, replacing it: readers see the old content or the new, never a part."""
    if is_s3(uri):
        fs, path = filesystem_of(uri)
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    path = os.path.abspath(uri.removeprefix("file://"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as sink:
        sink.write(data)
    os.replace(temporary, path)


def create_only(uri: str, data: bytes) -> bool:
    """Create the file at `uri` with `data` unless a file is there already; True when this call created it.
    Of concurrent callers exactly one succeeds: a hard link on a local filesystem, a conditional PUT
    (`If-None-Match: *`) on S3, the primitive delta-rs commits with."""
    if is_s3(uri):
        return _put_if_absent(uri, data)
    path = os.path.abspath(uri.removeprefix("file://"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.{id(data)}.tmp"
    with open(temporary, "wb") as sink:
        sink.write(data)
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)


def _put_if_absent(uri: str, data: bytes) -> bool:
    import boto3  # only object-store roots need it
    from botocore.exceptions import ClientError

    parsed = urlparse(uri)
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or None)
    try:
        client.put_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=data, IfNoneMatch="*")
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise StorageError(f"cannot write `{uri}`: {err}", path=uri) from None
