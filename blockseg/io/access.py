"""One line for failures that come from outside blockseg: object storage and metadata files.

Object storage (``s3://`` and other fsspec URLs) fails for reasons the user fixes outside
blockseg: no credentials, credentials the service rejects, no permission, a bucket that does not
exist, an endpoint that cannot be reached. botocore, s3fs and aiohttp report them as their own
exception types deep in a stack of asynchronous calls. :func:`storage_failure` turns any of them
into one line that says what to change, and :func:`probe` asks the store once, before a command
reads or writes anything there, so the failure is reported before any work starts (and before
zarr's concurrent metadata reads each fail on their own).

A metadata file that does not parse (a ``zarr.json`` that is not UTF-8 JSON, ...) is named by
:func:`bad_metadata`; :func:`explain` is the CLI's last resort for both kinds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import fsspec

from ..errors import BlocksegError
from .storage import is_url

#: metadata files of zarr v3 and v2 nodes, checked in this order
METADATA_FILES = ("zarr.json", ".zarray", ".zgroup", ".zattrs")

#: packages whose exceptions are storage failures (matched by class name, never imported here)
_REMOTE_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "google.auth", "gcsfs", "azure", "urllib3")
_NO_CREDENTIALS = {
    "NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "NoAuthTokenError",
    "TokenRetrievalError", "UnauthorizedSSOTokenError", "SSOTokenLoadError", "DefaultCredentialsError",
}  # fmt: skip
_UNREACHABLE = {
    "EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ProxyConnectionError",
    "ReadTimeoutError", "ClientConnectorError", "ClientConnectorDNSError", "ServerDisconnectedError",
    "ServerTimeoutError", "SSLError", "NewConnectionError", "MaxRetryError",
}  # fmt: skip
#: service error codes: the credentials themselves are wrong
_REJECTED = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
    "AuthorizationHeaderMalformed", "InvalidClientTokenId", "UnrecognizedClientException",
}  # fmt: skip
#: service error codes: the credentials are fine but lack permission (or a HEAD's bare 403)
_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "403", "Forbidden"}
_NO_BUCKET = {"NoSuchBucket"}

_CREDENTIAL_HINT = (
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment of blockseg and of its dask workers"
)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc``, then what it was raised from (or during), outermost first."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)


def _service_error(exc: BaseException) -> tuple[str, str, str]:
    """``(code, message, bucket)`` of a botocore ``ClientError`` (empty strings if unknown)."""
    response = getattr(exc, "response", None)
    err = response.get("Error", {}) if isinstance(response, dict) else {}
    if not isinstance(err, dict):
        return "", "", ""
    return str(err.get("Code") or ""), str(err.get("Message") or ""), str(err.get("BucketName") or "")


def _endpoint(exc: BaseException) -> str:
    """The ``scheme://host:port`` an exception could not reach, or ``""``."""
    kwargs = getattr(exc, "kwargs", None)
    url = kwargs.get("endpoint_url") if isinstance(kwargs, dict) else None
    if url:
        parts = urlsplit(str(url))
        return f"{parts.scheme}://{parts.netloc}" if parts.netloc else str(url)
    host, port = getattr(exc, "host", None), getattr(exc, "port", None)
    if isinstance(host, str) and host:
        return f"{host}:{port}" if port else host
    return ""


def _bucket(url: str | None) -> str:
    if not url or "://" not in url:
        return ""
    return url.split("://", 1)[1].split("/", 1)[0]


def storage_failure(exc: BaseException, url: str | None = None) -> str | None:
    """One line for an object-storage failure anywhere in ``exc``'s chain, else None.

    Parameters
    ----------
    exc : BaseException
        What a read or write raised (s3fs translates service errors into ``OSError`` raised
        from botocore's ``ClientError``; credentials and connection failures stay botocore's).
    url : str, optional
        The location that was being read or written, named in the line.

    Returns
    -------
    str or None
        E.g. ``no credentials for object storage (s3://b/out.zarr): set AWS_ACCESS_KEY_ID ...``.
    """
    where = f" ({url})" if url else ""
    for e in _chain(exc):
        mod, name = type(e).__module__ or "", type(e).__name__
        if not mod.startswith(_REMOTE_MODULES):
            continue
        if name in _NO_CREDENTIALS:
            return f"no credentials for object storage{where}: set {_CREDENTIAL_HINT}"
        if name in _UNREACHABLE:
            at = _endpoint(e)
            return (
                f"cannot reach object storage{where}{' at ' + at if at else ''} ({name}): "
                "check the endpoint (AWS_ENDPOINT_URL) and the network"
            )
        code, message, bucket = _service_error(e)
        if not code:
            continue
        if code in _NO_BUCKET:
            bucket = bucket or _bucket(url)
            return f"bucket {bucket!r} does not exist{where}" if bucket else f"the bucket does not exist{where}"
        if code in _REJECTED:
            return f"object storage rejected the credentials{where} ({code}: {message.rstrip('.')}): check {_CREDENTIAL_HINT}"
        if code in _DENIED:
            return f"access denied by object storage{where} ({code}): the credentials lack permission for it"
    return None


def metadata_failure(exc: BaseException) -> str | None:
    """One line for a file that is not UTF-8 JSON anywhere in ``exc``'s chain, else None."""
    for e in _chain(exc):
        if isinstance(e, json.JSONDecodeError):
            return f"a JSON file blockseg reads does not parse ({e.msg}: line {e.lineno} column {e.colno}); --debug shows which"
        if isinstance(e, UnicodeDecodeError):
            return f"a file blockseg reads is not UTF-8 text ({e.reason} at byte {e.start}); --debug shows which"
    return None


def explain(exc: BaseException, url: str | None = None) -> str | None:
    """:func:`storage_failure` or :func:`metadata_failure`, whichever applies, else None."""
    return storage_failure(exc, url) or metadata_failure(exc)


def _read(path: str, storage_options: dict | None) -> bytes | None:
    """The bytes of a file or object, or None if it is not there."""
    if not is_url(path):
        try:
            with open(path.removeprefix("file://"), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    try:
        with fsspec.open(path, "rb", **(storage_options or {})) as f:
            return f.read()
    except FileNotFoundError:
        return None


def bad_metadata(path: str, storage_options: dict | None = None) -> str | None:
    """One line naming the zarr metadata file of node ``path`` that does not parse, else None.

    Each of :data:`METADATA_FILES` that exists must be UTF-8 text holding a JSON object.

    Raises
    ------
    BlocksegError
        If object storage refuses the read (see :func:`storage_failure`).
    """
    base = str(path).rstrip("/")
    for name in METADATA_FILES:
        where = f"{base}/{name}"
        try:
            data = _read(where, storage_options)
        except OSError:
            continue  # unreadable for other reasons: zarr's own error says more
        except Exception as exc:
            line = storage_failure(exc, base)
            if line is None:
                raise
            raise BlocksegError(line) from None
        if data is None:
            continue
        try:
            meta = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            return f"{where}: metadata is not UTF-8 text ({e.reason} at byte {e.start}); the file is damaged"
        except json.JSONDecodeError as e:
            return f"{where}: metadata is not valid JSON ({e.msg}: line {e.lineno} column {e.colno}); the file is damaged"
        if not isinstance(meta, dict):
            return f"{where}: metadata is JSON but not an object ({type(meta).__name__}); the file is damaged"
    return None


#: (protocol, bucket) pairs this process has already probed successfully
_probed: set[tuple[str, str]] = set()


def probe(url: str, storage_options: dict | None = None) -> None:
    """Ask object storage once whether ``url``'s bucket can be used; raise one line if not.

    Local paths and stores other than S3 are not probed (their first read or write reports
    the failure, which the CLI turns into one line with :func:`explain`). A bucket is probed
    once per process: workers that reopen a volume per task do not pay for it again.

    Raises
    ------
    BlocksegError
        No credentials, rejected credentials, no such bucket, or an unreachable endpoint.
        A refusal to list (``AccessDenied``) is not raised here: permissions that allow reading
        or writing objects but not listing them are legitimate, and a refused read or write is
        reported when it happens.
    """
    url = str(url)
    if not is_url(url):
        return
    protocol, rest = url.split("://", 1)
    if protocol not in ("s3", "s3a"):
        return
    bucket, _, key = rest.partition("/")
    if not bucket or (protocol, bucket) in _probed:
        return

    try:
        fs, _ = fsspec.core.url_to_fs(url, **(storage_options or {}))
        if not hasattr(fs, "call_s3"):
            return
        fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key.split("#", 1)[0], MaxKeys=1)
    except Exception as exc:
        line = storage_failure(exc, url)
        if line is None and isinstance(exc, FileNotFoundError):
            line = f"bucket {bucket!r} does not exist ({url})"
        if line is None or line.startswith("access denied"):
            return
        raise BlocksegError(line) from None
    _probed.add((protocol, bucket))


__all__ = ["METADATA_FILES", "bad_metadata", "explain", "metadata_failure", "probe", "storage_failure"]
