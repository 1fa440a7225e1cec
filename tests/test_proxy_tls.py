"""https upstreams through the Rust proxy (rustls, verified against the system's CA
certificates, here a test CA given by SSL_CERT_FILE): loopback TLS backends with
certificates made by the `openssl` command for this test."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import NO_CHECK, Server


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca_and_leaf(work: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for localhost / 127.0.0.1 that it signed: (ca, cert, key)."""
    assert shutil.which("openssl"), "the openssl command is needed (Debian: openssl)"
    work.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem",
             "-days", "2", "-subj", f"/CN={name} test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=work)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", "/CN=localhost", cwd=work)  # fmt: skip
    (work / f"{name}.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{name}-ca.pem", "-CAkey", f"{name}-ca.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=work)  # fmt: skip
    return work / f"{name}-ca.pem", work / f"{name}.pem", work / f"{name}.key"


class TlsBackend:
    """A loopback HTTPS server answering every GET with its name and the SNI it saw."""

    def __init__(self, cert: Path, key: Path, name: str) -> None:
        seen: list[str | None] = []
        self.seen = seen

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = f"{name} {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.sni_callback = lambda _sock, server_name, _ctx: seen.append(server_name)  # type: ignore[assignment,misc]
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, TlsBackend, TlsBackend]]:
    work = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_ca_and_leaf(work / "trusted", "trusted")
    _, other_cert, other_key = make_ca_and_leaf(work / "other", "other")
    server = Server(work / "data", env={"SSL_CERT_FILE": str(ca)}).start()
    trusted, untrusted = TlsBackend(cert, key, "trusted"), TlsBackend(other_cert, other_key, "untrusted")
    try:
        for slug, backend in (("tls-svc", trusted), ("bad-tls-svc", untrusted)):
            body = {"slug": slug, "url": f"https://localhost:{backend.port}", "healthCheck": NO_CHECK}
            assert server.register(body).status == 201
        yield server, trusted, untrusted
    finally:
        trusted.close()
        untrusted.close()
        server.stop()
        server.assert_no_traffic_left_the_machine()


@pytest.mark.parametrize("data_port", [False, True], ids=["api-port", "data-port"])
def test_an_https_upstream_is_proxied_with_its_name_verified(
    tls: tuple[Server, TlsBackend, TlsBackend], data_port: bool
) -> None:
    server, trusted, _ = tls
    reply = server.call("GET", "/tls-svc/hello?x=1", token=None, data_port=data_port)
    assert (reply.status, reply.body) == (200, b"trusted /tls-svc/hello?x=1")
    assert "localhost" in trusted.seen  # SNI: the instance's host name, not the address


def test_an_upstream_whose_certificate_is_not_trusted_is_a_502(tls: tuple[Server, TlsBackend, TlsBackend]) -> None:
    server, _, untrusted = tls
    reply = server.call("GET", "/bad-tls-svc/hello", token=None)
    assert reply.status == 502, reply.body
    assert f"https://localhost:{untrusted.port}" in reply.json["error"], reply.body
