"""The S3 backend against moto (quick) and SeaweedFS (a real object store), both on 127.0.0.1."""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.errors import ObjectMissing, StorageAccessDenied, StorageError, StorageReadOnly
from cairn.storage.location import parse_location
from cairn.storage.retry import RetryPolicy
from cairn.storage.s3 import S3Backend
from cairn.storage.stack import open_storage
from cairn.testing.conformance import BackendConformance, names, pattern
from servers import READER_KEY, SeaweedFS, aws_env, free_ports, s3_client
from tcp_proxy import TcpProxy


@pytest.fixture
def aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_env(tmp_path).items():
        monkeypatch.setenv(name, value)


def shared_bucket(endpoint: str) -> str:
    """One bucket per server; tests keep apart by key prefix (a SeaweedFS bucket costs a volume)."""
    client = s3_client(endpoint)
    if not any(b["Name"] == "cairn-tests" for b in client.list_buckets().get("Buckets", [])):
        client.create_bucket(Bucket="cairn-tests")
    return "cairn-tests"


def s3_backend(endpoint: str, bucket: str | None = None, prefix: str | None = None, **kwargs: object) -> S3Backend:
    """A backend on a fresh prefix of the shared bucket (or of `bucket`)."""
    bucket = bucket or shared_bucket(endpoint)
    prefix = prefix if prefix is not None else f"t-{uuid.uuid4().hex[:12]}"
    location = parse_location(f"s3:{endpoint}/{bucket}/{prefix}")
    return S3Backend(location, **kwargs)  # type: ignore[arg-type]


class TestMotoConformance(BackendConformance):
    @pytest.fixture
    def backend(self, aws: None, moto_s3: str) -> Iterator[S3Backend]:
        backend = s3_backend(moto_s3)
        yield backend
        backend.close()

    def test_concurrent_stores(self, backend: S3Backend) -> None:  # type: ignore[override]
        pytest.skip("moto's server races on concurrent overwrites of one key (ValueError: I/O operation "
                    "on closed file, answered as HTTP 500); SeaweedFS runs this test")


class TestSeaweedConformance(BackendConformance):
    @pytest.fixture
    def backend(self, aws: None, seaweedfs: SeaweedFS) -> Iterator[S3Backend]:
        backend = s3_backend(seaweedfs.endpoint)
        yield backend
        backend.close()


MiB = 1024 * 1024


def no_uploads_left(endpoint: str, bucket: str, prefix: str) -> bool:
    answer = s3_client(endpoint).list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return not answer.get("Uploads")


@pytest.mark.parametrize("server", ["moto", "seaweedfs"])
def test_large_objects_go_up_in_parts(aws: None, server: str, request: pytest.FixtureRequest) -> None:
    endpoint = request.getfixturevalue("moto_s3") if server == "moto" else request.getfixturevalue("seaweedfs").endpoint
    backend = s3_backend(endpoint, multipart_threshold=5 * MiB, part_size=5 * MiB)
    data = pattern(12 * MiB + 5)
    backend.store("data/big", memoryview(data))
    assert backend.load("data/big") == data
    assert backend.load("data/big", 5 * MiB - 3, 10) == data[5 * MiB - 3 : 5 * MiB + 7]
    head = s3_client(endpoint).head_object(Bucket="cairn-tests", Key=backend._key("data/big"))
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    backend.close()


def test_a_failed_multipart_upload_is_aborted_and_invisible(aws: None, seaweedfs: SeaweedFS) -> None:
    backend = s3_backend(seaweedfs.endpoint, multipart_threshold=5 * MiB, part_size=5 * MiB)
    calls = []

    def second_part_fails(params: dict[str, object], **_: object) -> None:
        calls.append(params["PartNumber"])
        if params["PartNumber"] == 2:
            raise ConnectionResetError("connection reset by peer")

    backend._client.meta.events.register("provide-client-params.s3.UploadPart", second_part_fails)
    with pytest.raises(StorageError) as caught:
        backend.store("data/big", pattern(11 * MiB))
    assert calls == [1, 2]
    assert "data/big" in str(caught.value)
    assert list(backend.list()) == []
    assert no_uploads_left(seaweedfs.endpoint, "cairn-tests", backend._prefix)
    backend.close()


def test_wrong_credentials(aws: None, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    backend = s3_backend(seaweedfs.endpoint)
    for call in (lambda: backend.load("config"), lambda: backend.store("config", b"x"), lambda: list(backend.list())):
        with pytest.raises(StorageAccessDenied) as caught:
            call()
        assert str(caught.value) == (f"{seaweedfs.endpoint} refused the S3 credentials (SignatureDoesNotMatch) "
                                     f"for {backend.properties.location}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(StorageAccessDenied, match=r"refused the S3 credentials \(InvalidAccessKeyId\)"):
        s3_backend(seaweedfs.endpoint).load("config")


def test_no_credentials_at_all(aws: None, moto_s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageAccessDenied, match="^no S3 credentials for s3:.*: set AWS_ACCESS_KEY_ID"):
        s3_backend(moto_s3).load("config")


def test_credentials_from_a_profile(aws: None, seaweedfs: SeaweedFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    credentials = tmp_path / "credentials"
    credentials.write_text("[backup]\naws_access_key_id = cairntest\naws_secret_access_key = cairnsecret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "backup")
    backend = s3_backend(seaweedfs.endpoint)
    backend.store("config", b"from a profile")
    assert backend.load("config") == b"from a profile"


def test_a_read_only_key_raises_storage_read_only(aws: None, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = s3_backend(seaweedfs.endpoint)
    writer.store("data/kept", b"kept")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READER_KEY)
    reader = s3_backend(seaweedfs.endpoint, prefix=writer._prefix.rstrip("/"))
    assert reader.load("data/kept") == b"kept"
    assert names(reader.list()) == {"data/kept"}
    with pytest.raises(StorageReadOnly, match="is read-only: access denied to write data/new"):
        reader.store("data/new", b"x")
    with pytest.raises(StorageReadOnly, match="access denied to delete data/kept"):
        reader.delete("data/kept")
    assert names(writer.list()) == {"data/kept"}


def test_a_missing_bucket_is_an_error_and_init_creates_it(aws: None, seaweedfs: SeaweedFS) -> None:
    bucket = f"absent-{uuid.uuid4().hex[:8]}"
    backend = s3_backend(seaweedfs.endpoint, bucket=bucket, prefix="repo")
    message = (f"the bucket {bucket} does not exist at {seaweedfs.endpoint}: check the location, or create the "
               "repository (and the bucket) with 'cairn init'")
    for call in (lambda: backend.load("config"), lambda: backend.store("config", b"x"), lambda: list(backend.list())):
        with pytest.raises(StorageError) as caught:
            call()
        assert str(caught.value) == message and not isinstance(caught.value, ObjectMissing)
    creating = s3_backend(seaweedfs.endpoint, bucket=bucket, prefix="repo", create=True)
    with pytest.raises(ObjectMissing):
        creating.load("config")
    assert list(creating.list()) == []
    creating.store("config", b"first")
    assert backend.load("config") == b"first"
    assert any(b["Name"] == bucket for b in s3_client(seaweedfs.endpoint).list_buckets()["Buckets"])


def test_nothing_listening_is_transient(aws: None) -> None:
    port = free_ports(1)[0]
    backend = s3_backend(f"http://127.0.0.1:{port}", bucket="b")
    with pytest.raises(StorageError) as caught:
        backend.load("config")
    assert caught.value.transient
    assert str(caught.value).startswith(f"cannot read config in s3:http://127.0.0.1:{port}/b/")
    assert "Could not connect to the endpoint URL" in str(caught.value)


class Answers503(http.server.BaseHTTPRequestHandler):
    """An overloaded S3 server: every request gets 503 SlowDown."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


def test_throttling_is_retried_then_reported(aws: None) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers503)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        backend = open_storage(f"s3:http://127.0.0.1:{server.server_port}/b/p",
                               retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02))
        with pytest.raises(StorageError, match=r"SlowDown Please reduce your request rate\. \(gave up after 3 tries"):
            backend.load("config")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "location,env,style",
    [
        ("s3:http://127.0.0.1:9/b", None, "path"),
        ("s3:https://s3.eu-west-1.amazonaws.com/b", None, "virtual"),
        ("s3:http://127.0.0.1:9/b?addressing=virtual", None, "virtual"),
        ("s3:https://s3.amazonaws.com/b?addressing=path", None, "path"),
        ("s3:http://minio.lan:9000/b", "virtual", "virtual"),
    ],
)
def test_addressing_style(aws: None, location: str, env: str | None, style: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if env:
        monkeypatch.setenv("CAIRN_S3_ADDRESSING", env)
    backend = S3Backend(parse_location(location))  # type: ignore[arg-type]
    assert backend._client.meta.config.s3["addressing_style"] == style
    assert backend._client.meta.config.request_checksum_calculation == "when_required"


def test_region_from_the_location_or_the_environment(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert S3Backend(parse_location("s3:http://h/b?region=eu-central-1"))._client.meta.region_name == "eu-central-1"  # type: ignore[arg-type]
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert S3Backend(parse_location("s3:http://h/b"))._client.meta.region_name == "ap-south-1"  # type: ignore[arg-type]


def test_bytes_damaged_on_the_way_are_refused_then_sent_again(aws: None, seaweedfs: SeaweedFS) -> None:
    """Content-MD5 on every PUT: the server refuses a damaged upload (BadDigest) instead of storing it."""
    data = pattern(MiB)
    proxy = TcpProxy(seaweedfs.s3_port, corrupt_at=500_000)  # inside the first PUT's body
    try:
        raw = s3_backend(f"http://127.0.0.1:{proxy.port}", bucket=shared_bucket(seaweedfs.endpoint))
        with pytest.raises(StorageError, match="BadDigest") as caught:
            raw.store("data/x", data)
        assert proxy.corrupted and caught.value.transient
        with pytest.raises(ObjectMissing):
            raw.stat("data/x")
        proxy.corrupted, proxy.corrupt_at = False, 400_000  # the next connection: damaged once more
        retrying = open_storage(raw.properties.location, retry=RetryPolicy(base_delay=0.01, max_delay=0.05))
        retrying.store("data/x", data)
        assert proxy.corrupted
        assert retrying.load("data/x") == data
    finally:
        proxy.stop()
