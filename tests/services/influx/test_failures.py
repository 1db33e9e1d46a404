"""The InfluxDB historian against servers that refuse: 5xx, wrong credentials, untrusted TLS.

Each test uses a real server: a 503 answered by a small HTTP server of the test on
127.0.0.1 (influxd itself answers 5xx only when it breaks), then a real ``influxd``
started on that very port; ``influxd`` with ``auth-enabled`` and a wrong password; and
``influxd`` serving HTTPS with a certificate made here (``cryptography``) by a CA of the
test. In every case the records stay in the buffer with one clear event, nothing is set
aside as refused data, and once the server takes them (the right port, password or CA)
every point arrives exactly once (counted per measurement).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from influx_producer import expected_points, records
from influx_server import InfluxServer, free_port

from bpcontrol.records import RunIdentity
from services.historian.buffer import ForwardBuffer
from services.historian.influx import HistorianEvent, HistorianEventKind, InfluxHistorian
from services.historian.influx_client import InfluxConfig

RUN = RunIdentity("basel", "R-101", "B-fail", "r-fail", "2026-03-01T08:00:00+00:00")
N_STEPS = 30
TOTAL = sum(expected_points(N_STEPS).values())


def counts(server: InfluxServer, database: str) -> dict[str, int]:
    return {m: server.count(database, m) for m in expected_points(1)}


def write_all(h: InfluxHistorian) -> None:
    for r in records(N_STEPS, RUN):
        h.write(r)


def held_back(
    config: InfluxConfig, path: Path, kind: HistorianEventKind
) -> tuple[list[HistorianEvent], list[HistorianEvent]]:
    """Write the records through a historian whose server does not take them: nothing
    delivered, all pending, then closed (they stay in the buffer file, nothing set aside).
    Returns (the events of ``kind``, all events)."""
    h = InfluxHistorian(config, path, max_backoff_s=0.2, drain_on_close_s=0.1)
    write_all(h)
    assert not h.flush(2.0)
    assert h.delivered_points == 0 and h.pending_points == TOTAL
    events = h.events()
    h.close()
    buffer = ForwardBuffer(path)
    assert buffer.totals()[0] == TOTAL and buffer.dead_letters() == []
    return [e for e in events if e.kind is kind], events


def deliver(config: InfluxConfig, path: Path) -> None:
    """Open a historian on the buffer file ``path`` and let it deliver what it holds."""
    h = InfluxHistorian(config, path)
    assert h.flush(60.0), f"{h.pending_points} points left, {h.last_error!r}"
    h.close()
    assert ForwardBuffer(path).totals() == (0, 0)


class _Unavailable:
    """A real HTTP server on 127.0.0.1:``port`` that answers every request 503 (an
    overloaded or restarting server behind a proxy, say), counting the writes."""

    def __init__(self, port: int) -> None:
        self.writes = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                if self.path.startswith("/write"):
                    outer.writes += 1
                body = b'{"error":"service unavailable"}'
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")  # none outlives close()
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def test_503_keeps_records_buffered_until_the_server_takes_them(
    tmp_path: Path, database: str
) -> None:
    port = free_port()
    unavailable = _Unavailable(port)
    config = InfluxConfig(
        url=f"http://127.0.0.1:{port}", database=database, create_database=False, timeout_s=2.0
    )
    h = InfluxHistorian(config, tmp_path / "buffer.sqlite", max_backoff_s=0.2)
    try:
        write_all(h)
        assert not h.flush(3.0)  # 3 s at <= 0.2 s between retries: several tries, all 503
        assert unavailable.writes >= 3
        assert h.delivered_points == 0 and h.set_aside_points == 0
        assert h.pending_points == TOTAL
        down = [e for e in h.events() if e.kind is HistorianEventKind.SERVER_DOWN]
        assert len(down) == 1 and "503" in down[0].message, down  # one event, not one per try
    finally:
        unavailable.close()
    server = InfluxServer(tmp_path / "influxd", http_port=port)  # the real one, same address
    server.start()
    try:
        server.query(f'CREATE DATABASE "{database}"')
        assert h.flush(60.0), f"{h.pending_points} points left, {h.last_error!r}"
        h.close()
        assert counts(server, database) == expected_points(N_STEPS)  # 0 lost, 0 twice
        assert HistorianEventKind.SERVER_UP in [e.kind for e in h.events()]
        buffer = ForwardBuffer(tmp_path / "buffer.sqlite")
        assert buffer.totals() == (0, 0) and buffer.dead_letters() == []
    finally:
        server.stop()


def test_wrong_password_keeps_records_buffered_then_right_one_delivers(
    tmp_path: Path, database: str
) -> None:
    server = InfluxServer(tmp_path / "influxd", auth=True)
    server.start()
    try:
        user, password = server.credentials
        wrong = InfluxConfig(
            url=server.url,
            database=database,
            username=user,
            password="not-" + password,
            timeout_s=2.0,
        )
        path = tmp_path / "buffer.sqlite"
        auth, events = held_back(wrong, path, HistorianEventKind.AUTH_FAILED)
        assert len(auth) == 1 and "401" in auth[0].message, events
        assert all(password not in e.message for e in events)  # no secret in an event
        deliver(replace(wrong, password=password), path)  # the credentials fixed
        assert counts(server, database) == expected_points(N_STEPS)
    finally:
        server.stop()


def _signed(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    """A certificate for ``subject`` valid for a day, signed by ``issuer_key``."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA of the test and a certificate for 127.0.0.1 signed by it: (cert, key, CA)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    name = "bpcontrol test CA"
    ca = _signed(
        name,
        ca_key,
        name,
        ca_key,
        [(x509.BasicConstraints(ca=True, path_length=0), True), (usage, True)],
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = _signed(
        "127.0.0.1",
        key,
        name,
        ca_key,
        [(san, False), (x509.BasicConstraints(ca=False, path_length=None), True)],
    )
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "server.pem", folder / "server.key", folder / "ca.pem"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths


def test_tls_certificate_verified_by_default_and_trusted_with_its_ca(
    tmp_path: Path, database: str
) -> None:
    cert, key, ca = _certificates(tmp_path / "tls")
    server = InfluxServer(tmp_path / "influxd", tls=(cert, key, ca))
    server.start()
    try:
        assert server.url.startswith("https://")
        config = InfluxConfig(url=server.url, database=database, timeout_s=2.0)
        assert config.verify_tls  # the default
        path = tmp_path / "buffer.sqlite"
        tls, events = held_back(config, path, HistorianEventKind.TLS_FAILED)
        assert len(tls) == 1, events
        assert "CERTIFICATE_VERIFY_FAILED" in tls[0].message and "ca_file" in tls[0].message
        assert counts(server, database)["measurement"] == 0  # nothing reached it
        deliver(replace(config, ca_file=str(ca)), path)  # the CA configured
        assert counts(server, database) == expected_points(N_STEPS)
    finally:
        server.stop()
