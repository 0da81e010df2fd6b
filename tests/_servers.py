"""Real servers the suites start on 127.0.0.1 (no mocks): a free port and ``mlflow server``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MlflowServer", "S3Server", "free_port", "kill_session"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we read
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def kill_session(sid: int, timeout: float = 30) -> None:
    """SIGKILL every process of the session a ``start_new_session=True`` child leads, and wait
    until they are gone. Not just its process group: Ray puts each trial worker in a group of
    its own, and a worker left alive goes on writing checkpoints into the test's folders."""
    assert sid != os.getsid(0), "refusing to kill the test run's own session"
    deadline = time.monotonic() + timeout
    while members := _session_members(sid):
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert time.monotonic() < deadline, f"processes {members} of session {sid} outlived SIGKILL"
        time.sleep(0.05)


@dataclass
class MlflowServer:
    """``mlflow server`` on 127.0.0.1 (sqlite backend, local artifacts) that tests stop and restart."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        """Start it and wait until ``/health`` answers."""
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
             "--artifacts-destination", str(self.root / "server_artifacts"), "--workers", "1"],
            cwd=self.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.3)

    def stop(self) -> None:
        """Kill the server and its workers."""
        if self.proc is not None:
            kill_session(self.proc.pid)
            self.proc.wait()
            self.proc = None


class S3Server:
    """moto's S3 server (PyPI ``moto[server]``) on 127.0.0.1, in a thread of the test process, so
    drivers and Ray workers in other processes reach it over HTTP as they would a real store.

    ``env`` is what a client needs (pyarrow and Ray read ``AWS_ENDPOINT_URL``); ``bucket`` exists.
    moto 5.2 names CompleteMultipartUpload's XML root ``...Response`` where S3 (and the AWS C++
    SDK inside pyarrow, which then reports an error in a 200 reply) expects
    ``CompleteMultipartUploadResult``: the WSGI wrapper below renames it, nothing else.
    """

    def __init__(self, bucket: str = "sweeps") -> None:
        from moto.server import ThreadedMotoServer

        class _Server(ThreadedMotoServer):
            def _server_entry(self) -> None:  # moto's own, with the reply fixed
                from moto.server import DomainDispatcherApplication, create_backend_app
                from werkzeug.serving import make_server

                app = _complete_upload_fix(DomainDispatcherApplication(create_backend_app))
                self._server = make_server(self._ip_address, self._port, app, True)
                self._server_ready_event.set()
                self._server.serve_forever()

        self.bucket = bucket
        self.port = free_port()
        self._server = _Server(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}"}

    def start(self) -> None:
        """Start it and create the bucket."""
        import logging

        import boto3

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self._server.start()
        boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        self._server.stop()


def _complete_upload_fix(app: object) -> object:
    def wrapped(environ: dict[str, object], start_response: object) -> list[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or "uploadId" not in str(environ.get("QUERY_STRING", "")):
            return app(environ, start_response)  # type: ignore[operator]
        reply: list[object] = []
        body = b"".join(app(environ, lambda status, headers, exc_info=None: reply.extend([status, headers])))  # type: ignore[operator]
        body = body.replace(b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult")
        headers = [(k, str(len(body)) if k.lower() == "content-length" else v) for k, v in reply[1]]  # type: ignore[attr-defined]
        start_response(reply[0], headers)  # type: ignore[operator]
        return [body]

    return wrapped
