"""ObjectStore against the real embedded S3 (SeaweedFS)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import pytest
from pydantic import SecretStr

from services.runtime.settings import S3Settings, Settings
from services.runtime.storage import ObjectMissingError, ObjectStore, StorageError


def test_put_get_exists_keys_round_trip(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    store = ObjectStore(stack_settings.s3)
    prefix = unique_name("objects")
    blobs = {f"{prefix}/cam-{i}/{i:06d}.jpg": os.urandom(100_000 + i) for i in range(3)}
    for key, data in blobs.items():
        stored = store.put(key, data, content_type="image/jpeg")
        assert stored.size == len(data)
        assert stored.sha256 == hashlib.sha256(data).hexdigest()
        assert stored.bucket == store.bucket
        assert stored.etag

    for key, data in blobs.items():
        assert store.exists(key)
        got = store.get(key)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
        assert got == data
    assert sorted(store.keys(prefix + "/")) == sorted(blobs)
    assert store.keys(prefix + "/cam-1/") == [f"{prefix}/cam-1/000001.jpg"]


def test_missing_object(stack_settings: Settings, unique_name: Callable[[str], str]) -> None:
    store = ObjectStore(stack_settings.s3)
    key = unique_name("missing") + "/nothing.jpg"
    assert not store.exists(key)
    with pytest.raises(ObjectMissingError, match="does not exist"):
        store.get(key)
    with pytest.raises(ObjectMissingError):
        store.get(key, bucket=unique_name("no-bucket"))


def test_ensure_bucket_is_idempotent(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    store = ObjectStore(stack_settings.s3)
    bucket = unique_name("bkt").lower().replace("_", "-")[:63]
    assert store.ensure_bucket(bucket) is True
    assert store.ensure_bucket(bucket) is False
    assert store.ping() == (True, f"bucket {store.bucket} present")


def test_wrong_credentials_are_refused(stack_settings: Settings) -> None:
    wrong = stack_settings.s3.model_copy(update={"secret_key": SecretStr("not-the-secret")})
    store = ObjectStore(wrong, retries=0)
    with pytest.raises(StorageError, match=r"AccessDenied|SignatureDoesNotMatch") as info:
        store.put("x/denied.bin", b"data")
    assert "DEPOTWATCH_S3__" in str(info.value)
    ok, detail = store.ping()
    assert not ok
    assert stack_settings.s3.endpoint in detail


def test_unreachable_store_fails_fast_with_a_clear_error(stack_settings: Settings) -> None:
    from services.infra.processes import free_ports

    (port,) = free_ports(1)
    dead = stack_settings.s3.model_copy(update={"endpoint": f"127.0.0.1:{port}"})
    store = ObjectStore(dead, timeout_s=1.0, retries=0)
    with pytest.raises(StorageError, match=rf"127\.0\.0\.1:{port}: put k failed"):
        store.put("k", b"v")


@pytest.mark.parametrize("name", ["Frames", "my_frames", "ab", "x" * 64])
def test_invalid_bucket_name_is_one_clear_error(name: str) -> None:
    store = ObjectStore(S3Settings(endpoint="127.0.0.1:9"))
    with pytest.raises(StorageError, match=r"is not valid S3.*DEPOTWATCH_S3__BUCKET"):
        store.ensure_bucket(name)


@pytest.mark.parametrize("endpoint", ["http://minio:9000", "minio:port", "minio:9000/frames"])
def test_endpoint_with_scheme_or_path_is_one_clear_error(endpoint: str) -> None:
    with pytest.raises(StorageError, match=r"DEPOTWATCH_S3__ENDPOINT=.*host:port without a scheme"):
        ObjectStore(S3Settings(endpoint=endpoint))
