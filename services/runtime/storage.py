"""Object store adapter (S3 API through the ``minio`` SDK): MinIO, SeaweedFS or AWS S3."""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from minio.helpers import check_bucket_name
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from services.runtime.settings import S3Settings

log = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """The object store failed or could not be reached."""


class ObjectMissingError(StorageError):
    """The object does not exist."""


@dataclass(frozen=True)
class StoredObject:
    """What a put stored."""

    bucket: str
    key: str
    size: int
    sha256: str
    etag: str


EPOCH = datetime.fromtimestamp(0, tz=UTC)


@dataclass(frozen=True)
class ListedObject:
    """One object a listing found."""

    key: str
    modified: datetime
    size: int


class ObjectStore:
    """Puts and gets objects in one bucket, with short timeouts so outages surface quickly."""

    def __init__(self, s3: S3Settings, timeout_s: float = 10.0, retries: int = 1) -> None:
        self.settings = s3
        self.bucket = s3.bucket
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(3.0, timeout_s), read=timeout_s),
            retries=urllib3.Retry(
                total=retries, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)
            ),
            maxsize=16,
        )
        try:
            self._client = Minio(
                s3.endpoint,
                access_key=s3.access_key.get_secret_value(),
                secret_key=s3.secret_key.get_secret_value(),
                secure=s3.secure,
                region=s3.region,
                http_client=http,
            )
        except ValueError as exc:
            # minio rejects "http://host:port" and bad ports with a bare ValueError.
            raise StorageError(
                f"DEPOTWATCH_S3__ENDPOINT={s3.endpoint!r} is not usable ({exc}); give host:port "
                "without a scheme (e.g. minio:9000) and set DEPOTWATCH_S3__SECURE for HTTPS"
            ) from None

    def _fail(self, action: str, exc: Exception) -> StorageError:
        return StorageError(
            f"object store {self.settings.endpoint}: {action} failed "
            f"({type(exc).__name__}: {exc}); check that it is up and DEPOTWATCH_S3__* settings"
        )

    def ensure_bucket(self, bucket: str | None = None) -> bool:
        """Create the bucket if missing; returns True if it was created."""
        name = bucket or self.bucket
        try:
            check_bucket_name(name, strict=True)
        except ValueError:
            raise StorageError(
                f"bucket name {name!r} is not valid S3: use 3-63 lowercase letters, digits, dots "
                "and hyphens (DEPOTWATCH_S3__BUCKET)"
            ) from None
        try:
            if self._client.bucket_exists(name):
                return False
            self._client.make_bucket(name)
            return True
        except S3Error as exc:
            if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return False
            raise self._fail(f"creating bucket {name}", exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail(f"creating bucket {name}", exc) from None

    def set_expiry(self, days: int, prefix: str = "") -> None:
        """Lifecycle rule: objects under ``prefix`` expire after ``days``."""
        rule = Rule(
            ENABLED,
            rule_filter=Filter(prefix=prefix),
            rule_id=f"expire-{prefix or 'all'}-{days}d",
            expiration=Expiration(days=days),
        )
        try:
            self._client.set_bucket_lifecycle(self.bucket, LifecycleConfig([rule]))
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail("setting the lifecycle rule", exc) from None

    def expiry_days(self) -> int | None:
        """Expiry of the first lifecycle rule, if any."""
        try:
            cfg = self._client.get_bucket_lifecycle(self.bucket)
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail("reading the lifecycle rule", exc) from None
        if cfg is None or not cfg.rules or cfg.rules[0].expiration is None:
            return None
        return cfg.rules[0].expiration.days

    def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Store bytes under ``key``; returns size, SHA-256 and ETag."""
        try:
            res = self._client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
            )
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail(f"put {key}", exc) from None
        return StoredObject(
            bucket=self.bucket,
            key=key,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            etag=str(res.etag),
        )

    def put_file(
        self, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Store a file under ``key``, streamed in parts (videos, weights: not read into
        memory whole); the SHA-256 is computed while reading it."""
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        try:
            res = self._client.fput_object(self.bucket, key, str(path), content_type=content_type)
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail(f"put {key}", exc) from None
        return StoredObject(
            bucket=self.bucket,
            key=key,
            size=path.stat().st_size,
            sha256=digest.hexdigest(),
            etag=str(res.etag),
        )

    def get_file(self, key: str, path: Path) -> None:
        """Download an object to ``path`` in parts; :class:`ObjectMissingError` if absent."""
        try:
            self._client.fget_object(self.bucket, key, str(path))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise ObjectMissingError(f"object {self.bucket}/{key} does not exist") from None
            raise self._fail(f"get {self.bucket}/{key}", exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail(f"get {self.bucket}/{key}", exc) from None

    def get(self, key: str, bucket: str | None = None) -> bytes:
        """Bytes of an object; :class:`ObjectMissingError` if it does not exist."""
        name = bucket or self.bucket
        resp = None
        try:
            resp = self._client.get_object(name, key)
            return bytes(resp.read())
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise ObjectMissingError(f"object {name}/{key} does not exist") from None
            raise self._fail(f"get {name}/{key}", exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail(f"get {name}/{key}", exc) from None
        finally:
            if resp is not None:
                resp.close()
                resp.release_conn()

    def exists(self, key: str, bucket: str | None = None) -> bool:
        """Whether an object exists (in ``bucket``, default the frames bucket)."""
        try:
            self._client.stat_object(bucket or self.bucket, key)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
                return False
            raise self._fail(f"stat {key}", exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail(f"stat {key}", exc) from None

    def keys(self, prefix: str = "") -> list[str]:
        """Object keys under ``prefix`` (recursive)."""
        return [o.key for o in self.listing(prefix)]

    def listing(self, prefix: str = "", recursive: bool = True) -> list[ListedObject]:
        """Objects under ``prefix`` with their times and sizes (``recursive=False``: one
        level, where a "folder" comes back as its prefix, ending in ``/``)."""
        try:
            return [
                ListedObject(o.object_name, o.last_modified or EPOCH, o.size or 0)
                for o in self._client.list_objects(self.bucket, prefix, recursive=recursive)
                if o.object_name
            ]
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail(f"list {prefix}", exc) from None

    def delete(self, keys: list[str]) -> int:
        """Delete objects (many per request); returns how many were deleted."""
        if not keys:
            return 0
        try:
            errors = list(self._client.remove_objects(self.bucket, (DeleteObject(k) for k in keys)))
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail(f"delete {len(keys)} objects", exc) from None
        if errors:
            raise StorageError(
                f"object store {self.settings.endpoint}: {len(errors)} of {len(keys)} deletes "
                f"failed, first: {errors[0].code} {errors[0].name}"
            )
        return len(keys)

    def ping(self) -> tuple[bool, str]:
        """Health check: can the bucket be seen?"""
        try:
            ok = self._client.bucket_exists(self.bucket)
        except Exception as exc:
            return False, f"{self.settings.endpoint}: {type(exc).__name__}"
        return ok, f"bucket {self.bucket} {'present' if ok else 'missing'}"

    @property
    def raw(self) -> Minio:
        """The underlying minio client (benchmarks)."""
        return self._client
