"""A throwaway redis-server that speaks only TLS, with a self-signed certificate made by openssl:
what Heroku Redis provisions (a ``rediss://`` URL whose certificate no CA vouches for)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port


class TlsRedisServer:
    def __init__(self, tmp: Path, *, password: str):
        for tool in ("redis-server", "openssl"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed")
        self.tmp, self.password, self.port = tmp, password, free_port()
        self.cert, self.key = tmp / "redis.crt", tmp / "redis.key"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rediss://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
                str(self.key),
                "-out",
                str(self.cert),
            ],
            check=True,
            capture_output=True,
        )
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                str(self.cert),
                "--tls-key-file",
                str(self.key),
                "--tls-ca-cert-file",
                str(self.cert),
                "--tls-auth-clients",
                "no",
                "--requirepass",
                self.password,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.client().ping()
                return
            except Exception:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the TLS redis-server did not start (is redis-server built with TLS?)")

    def client(self):
        """A client that trusts this server's own certificate (the test's view, not the app's)."""
        from redis import Redis

        return Redis.from_url(self.url, ssl_ca_certs=str(self.cert), socket_connect_timeout=2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
