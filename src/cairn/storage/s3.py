"""Objects in an S3 bucket (AWS, MinIO, Ceph RGW, SeaweedFS, B2, Wasabi, ...) through boto3.

Object ``a/b/c`` is the key ``<prefix>a/b/c``. S3 already gives what the contract asks: a PUT
is atomic (the key shows the old object or the whole new one), a listing never shows an upload
in progress. Objects above `MULTIPART_THRESHOLD` go up in parts, so one lost connection costs a
part, not the whole object; a failed multipart upload is aborted, and never becomes visible.

Choices made for servers other than AWS:

* Checksums are computed and validated only where a request needs them
  (``when_required``): several servers reject or break on boto3's newer default CRC headers.
  Each PUT still carries Content-MD5, which every S3 server checks, so a corrupted upload is
  refused instead of stored.
* Addressing: virtual-host (``bucket.host``) for AWS endpoints, path (``host/bucket``) for the
  others, which rarely have wildcard DNS; ``?addressing=`` or ``CAIRN_S3_ADDRESSING`` override.
* boto3 does not retry: `cairn.storage.retry` does, the same way for every backend.

Credentials come from boto3's usual chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and
AWS_SESSION_TOKEN), AWS_PROFILE, ~/.aws/credentials and ~/.aws/config, then instance roles.

A bucket that does not exist is reported as such; only ``cairn init`` (``create=True``) creates
it, with its first write, so a typo in a location never starts a repository silently.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions as bce
import botocore.loaders
import botocore.session
from botocore.config import Config

from cairn.errors import ObjectMissing, StorageAccessDenied, StorageError, StorageFull, StorageReadOnly
from cairn.storage.base import NAME_RE, BackendProperties, ObjectInfo, check_name, check_range, check_size
from cairn.storage.location import S3Location

MiB = 1024 * 1024
MULTIPART_THRESHOLD = 64 * MiB
PART_SIZE = 16 * MiB
ENV_ADDRESSING = "CAIRN_S3_ADDRESSING"
_MISSING = {"NoSuchKey", "404", "NotFound"}
_AUTH = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired",
         "InvalidClientTokenId", "AuthorizationHeaderMalformed", "InvalidSecurity"}
_DENIED = {"AccessDenied", "403", "AllAccessDisabled", "Forbidden"}
_FULL = {"QuotaExceeded", "XMinioStorageFull", "InsufficientStorage", "StorageFull"}
# Worth another try: overload, a request cut short, or bytes damaged on the way (BadDigest).
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded",
              "TooManyRequests", "ServiceUnavailable", "InternalError", "OperationAborted", "BadDigest"}
_NETWORK = (bce.EndpointConnectionError, bce.ConnectionClosedError, bce.ConnectTimeoutError, bce.ReadTimeoutError,
            bce.IncompleteReadError, bce.ResponseStreamingError, bce.ProxyConnectionError, bce.HTTPClientError,
            ConnectionError, TimeoutError)


@functools.cache
def _shared_loader() -> botocore.loaders.Loader:
    """boto3 parses S3's 100 kB service model per session; one parse per process is enough."""
    return botocore.loaders.create_loader()


def _new_session() -> boto3.session.Session:
    """A fresh session (credentials and profile read now, from the current environment)."""
    core = botocore.session.get_session()
    core.register_component("data_loader", _shared_loader())
    return boto3.session.Session(botocore_session=core)


def _addressing(location: S3Location) -> str:
    chosen = location.addressing or os.environ.get(ENV_ADDRESSING) or "auto"
    if chosen == "auto":
        host = location.endpoint.split("://", 1)[1].split(":")[0]
        return "virtual" if host.endswith(".amazonaws.com") else "path"
    return chosen


class S3Backend:
    """A `Backend` on a bucket and key prefix. Constructing it makes no request."""

    def __init__(
        self,
        location: S3Location,
        *,
        create: bool = False,
        connections: int = 8,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        timeout: float = 60.0,
    ) -> None:
        self.location = location
        self._bucket = location.bucket
        self._prefix = location.prefix
        self._create = create
        self._multipart_threshold = multipart_threshold
        self._part_size = part_size
        self._properties = BackendProperties(location=location.text, connections=connections)
        session = _new_session()
        region = location.region or session.region_name or "us-east-1"
        self._region = region
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": _addressing(location)},
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=connections + 2,
            connect_timeout=min(timeout, 15.0),
            read_timeout=timeout,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = session.client("s3", endpoint_url=location.endpoint, config=config)

    @property
    def properties(self) -> BackendProperties:
        return self._properties

    def _key(self, name: str) -> str:
        return self._prefix + check_name(name)

    # -- translating failures ---------------------------------------------------------------

    def _error(self, exc: Exception, name: str, action: str) -> StorageError:
        """Translate a botocore failure once, here, into the matching `StorageError`."""
        where = self._properties.location
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return StorageAccessDenied(
                f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            )
        if isinstance(exc, _NETWORK):
            error = StorageError(f"cannot {action} {name} in {where}: {exc}")
            error.transient = True
            return error
        if not isinstance(exc, bce.ClientError):
            return StorageError(f"cannot {action} {name} in {where}: {exc}")
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code == "NoSuchBucket":
            return StorageError(
                f"the bucket {self._bucket} does not exist at {self.location.endpoint}: check the location, "
                "or create the repository (and the bucket) with 'cairn init'"
            )
        if code in _MISSING:
            return ObjectMissing(f"object {name} does not exist in {where}")
        if code in _AUTH:
            return StorageAccessDenied(f"{self.location.endpoint} refused the S3 credentials ({code}) for {where}")
        if code in _DENIED:
            if action in ("write", "delete"):
                return StorageReadOnly(f"{where} is read-only: access denied to {action} {name}")
            return StorageAccessDenied(f"access denied to {action} {name} in {where}: check the credentials and the bucket policy")
        if code in _FULL:
            return StorageFull(f"no space left on {where} while writing {name} ({code}): {StorageFull.AFTERMATH}")
        error = StorageError(f"cannot {action} {name} in {where}: {code or status} {exc.response.get('Error', {}).get('Message', '')}".rstrip())
        error.transient = status >= 500 or status == 429 or code in _TRANSIENT
        return error

    def _no_bucket(self, exc: Exception) -> bool:
        return isinstance(exc, bce.ClientError) and exc.response.get("Error", {}).get("Code") == "NoSuchBucket"

    # -- writing ----------------------------------------------------------------------------

    def store(self, name: str, data: bytes | memoryview) -> None:
        key = self._key(name)
        with memoryview(data) as view:
            check_size(name, view.nbytes)
            body = view.tobytes() if view.nbytes <= self._multipart_threshold else None
            try:
                try:
                    self._put(key, body, view)
                except bce.ClientError as exc:
                    if not (self._create and self._no_bucket(exc)):
                        raise
                    self._create_bucket()
                    self._put(key, body, view)
            except Exception as exc:
                raise self._error(exc, name, "write") from exc

    def _put(self, key: str, body: bytes | None, view: memoryview) -> None:
        if body is not None:
            self._client.put_object(Bucket=self._bucket, Key=key, Body=body, ContentMD5=_md5(body))
        else:
            self._multipart(key, view)

    def _multipart(self, key: str, view: memoryview) -> None:
        upload = self._client.create_multipart_upload(Bucket=self._bucket, Key=key)["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, view.nbytes, self._part_size), 1):
                part = view[start : start + self._part_size].tobytes()
                answer = self._client.upload_part(
                    Bucket=self._bucket, Key=key, UploadId=upload, PartNumber=number, Body=part, ContentMD5=_md5(part)
                )
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
            self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            try:
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload)
            except Exception:  # noqa: BLE001 - best effort; lifecycle rules clean up what stays
                pass
            raise

    def _create_bucket(self) -> None:
        extra: dict[str, Any] = {}
        if self._region != "us-east-1":
            extra["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        try:
            self._client.create_bucket(Bucket=self._bucket, **extra)
        except bce.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def delete(self, name: str) -> None:
        """S3 deletes a missing key without complaint; the contract wants `ObjectMissing`."""
        key = self._key(name)
        try:
            self._client.head_object(Bucket=self._bucket, Key=key)
            self._client.delete_object(Bucket=self._bucket, Key=key)
        except Exception as exc:
            raise self._error(exc, name, "delete") from exc

    # -- reading ----------------------------------------------------------------------------

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self._key(name)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"negative offset or length reading {name}")
        try:
            if length == 0:
                check_range(name, offset, length, self._size(key))
                return b""
            request: dict[str, Any] = {"Bucket": self._bucket, "Key": key}
            if offset or length is not None:
                last = "" if length is None else str(offset + length - 1)
                request["Range"] = f"bytes={offset}-{last}"
            try:
                answer = self._client.get_object(**request)
            except bce.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                    raise
                check_range(name, offset, length, self._size(key))  # raises unless reading at the end
                return b""
            total = _total_size(answer)
            data = answer["Body"].read()
        except Exception as exc:
            if self._create and self._no_bucket(exc):
                raise ObjectMissing(f"object {name} does not exist in {self._properties.location}") from exc
            raise self._error(exc, name, "read") from exc
        if "ContentRange" not in answer and "Range" in request:
            data = data[offset : check_range(name, offset, length, len(data))]  # a server that ignored Range
        else:
            end = check_range(name, offset, length, total)
            if len(data) != end - offset:
                error = StorageError(f"short read of {name} in {self._properties.location}: got {len(data)} of {end - offset} bytes")
                error.transient = True
                raise error
        return data

    def _size(self, key: str) -> int:
        return int(self._client.head_object(Bucket=self._bucket, Key=key)["ContentLength"])

    def stat(self, name: str) -> ObjectInfo:
        key = self._key(name)
        try:
            return ObjectInfo(name, self._size(key))
        except Exception as exc:
            raise self._error(exc, name, "read") from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=self._prefix + prefix)
        skip = len(self._prefix)
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    name = item["Key"][skip:]
                    if NAME_RE.match(name):
                        yield ObjectInfo(name, int(item["Size"]))
        except Exception as exc:
            if self._create and self._no_bucket(exc):
                return
            raise self._error(exc, prefix or ".", "list") from exc

    def close(self) -> None:
        self._client.close()


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _total_size(answer: dict[str, Any]) -> int:
    """The object's whole size from ``Content-Range: bytes a-b/total``, else the body's length."""
    content_range = answer.get("ContentRange")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    return int(answer.get("ContentLength", 0))
