"""`crowbar server` as a service: its TOML config file, TLS on a real loopback server with
certificates made here (a CA and a server certificate), the CLI verifying them, the refusal to
take tokens in clear off loopback, the logs (JSON, access lines with the user, no secrets), the
health check and the Prometheus metrics, the systemd unit, and the admin token re-issued."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from e2e_fixtures import e2e  # tests/e2e_fixtures.py

pytestmark = pytest.mark.e2e


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1 and localhost: (ca.pem, server.pem, server.key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crowbar test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crowbar")])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


class Service:
    """A `crowbar server --config FILE` process, its log, and the CLI's environment."""

    def __init__(self, root: Path, settings: dict, *args: str):
        self.root, self.port = root, e2e.free_port()
        self.config = root / "crowbar.toml"
        lines = [f"{k} = {json.dumps(v)}" for k, v in {"listen": [f"127.0.0.1:{self.port}"],
                                                       "data_dir": str(root / "data"), **settings}.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.log = root / "server.log"
        self.env = e2e.clean_env(XDG_CONFIG_HOME=str(root / "config"), HOME=str(root / "home"))
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen([e2e.CROWBAR, "server", "--config", str(self.config), *args], stdout=fh,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, cwd=root)

    def wait(self, url: str, verify, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                httpx.get(f"{url}/api/v2/health", verify=verify, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"not up after {timeout}s:\n{self.log.read_text()}")

    @property
    def token(self) -> str:
        return (self.root / "data" / "admin.token").read_text().strip()

    def cli(self, *args: str, **env: str) -> e2e.Result:
        proc = subprocess.run([e2e.CROWBAR, *args], env={**self.env, **env}, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL, cwd=self.root)
        return e2e.Result(args, proc.returncode, proc.stdout, proc.stderr)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture
def service(tmp_path):
    started = []

    def start(settings: dict, *args: str) -> Service:
        started.append(Service(tmp_path, settings, *args))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def test_tls_server_the_cli_verifies_and_json_logs_without_secrets(service, tmp_path):
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    s = service({"tls_cert": str(cert), "tls_key": str(key), "log_format": "json", "workers": 2})
    url = f"https://127.0.0.1:{s.port}"
    trusted = ssl.create_default_context(cafile=str(ca))
    s.wait(url, verify=trusted)
    # the CLI verifies by default: the test CA is not one of the system's
    r = s.cli("--endpoint", url, "nodes", "list", CROWBAR_TOKEN=s.token)
    line = e2e.one_error_line(r)
    assert "certificate" in line.lower(), line
    # with the CA, it works; through CROWBAR_CA too
    r = s.cli("--endpoint", url, "--ca", str(ca), "nodes", "create", "n1.example.com", CROWBAR_TOKEN=s.token)
    assert r.returncode == 0, str(r)
    r = s.cli("nodes", "list", "-o", "json", CROWBAR_ENDPOINT=url, CROWBAR_CA=str(ca), CROWBAR_TOKEN=s.token)
    assert r.returncode == 0 and [n["name"] for n in json.loads(r.stdout)] == ["n1.example.com"], str(r)
    # plain HTTP on the TLS port gets nothing useful
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{s.port}/api/v2/nodes", headers={"authorization": f"Bearer {s.token}"},
                  timeout=5).raise_for_status()
    # health: the database, the loops, the annealer's heartbeat
    health = httpx.get(f"{url}/api/v2/health", verify=trusted).json()
    assert health["status"] == "ok" and health["failed"] == []
    assert {"database", "annealer", "watchdog", "power", "collector", "annealer_heartbeat"} <= set(health["checks"])
    assert health["checks"]["collector"]["frozen_objects"] > 0  # start-up's objects are out of the passes
    # metrics: requests by route and code, nodes by state, services
    metrics = httpx.get(f"{url}/metrics", verify=trusted).text
    assert 'crowbar_http_requests_total{code="201",method="POST",route="/api/v2/nodes"} 1.0' in metrics
    assert "crowbar_http_request_duration_seconds_bucket" in metrics
    assert 'crowbar_nodes{state=' in metrics and "crowbar_annealer_queue_depth" in metrics
    assert 'crowbar_service_up{service="annealer"} 1.0' in metrics
    # a bad token in a header and in the URL: logged without it
    secret = "cb_" + "s3cret" * 6
    httpx.get(f"{url}/api/v2/nodes?token={secret}", headers={"authorization": f"Bearer {secret}"}, verify=trusted)
    assert s.stop() in (0, -15)
    log = s.log.read_text()
    assert s.token not in log and secret not in log and "s3crets3cret" not in log
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [r for r in records if r["logger"] == "crowbar.access"]
    created = next(r for r in access if r["method"] == "POST")
    assert created["status"] == 201 and created["user"] == "admin" and created["route"] == "/api/v2/nodes"
    assert any(r["status"] == 401 for r in access)
    events = [r for r in records if r["logger"] == "crowbar.events"]
    assert any(r["object_type"] == "node" and r["action"] == "create" and r["actor"] == "admin" for r in events)
    assert any(r["logger"] == "crowbar.server" and "TLS on" in r["message"] for r in records)


def test_no_token_in_clear_off_loopback(service, tmp_path):
    """The server refuses a plain listener off loopback unless --allow-http; the CLI refuses to send
    a token to http:// off loopback unless CROWBAR_ALLOW_HTTP=1."""
    s = service({"listen": ["0.0.0.0:" + str(e2e.free_port())]})
    s.proc.wait(60)
    text = s.log.read_text()
    assert s.proc.returncode == 1 and "--tls-cert" in text and "in clear" in text, text
    assert "Traceback" not in text
    r = s.cli("--endpoint", "http://192.0.2.1:3000", "nodes", "list", CROWBAR_TOKEN="cb_x" * 3)
    assert "in clear" in e2e.one_error_line(r)


def test_config_file_is_checked_and_the_command_line_wins(service, tmp_path):
    s = service({"workers": 0})
    assert s.proc.wait(60) != 0 and "workers" in s.log.read_text() and "Traceback" not in s.log.read_text()
    (tmp_path / "server.log").unlink()
    s = service({"surprise": 1})
    assert s.proc.wait(60) != 0 and "unknown setting 'surprise'" in s.log.read_text()
    s = service({"listen": "127.0.0.1:1", "log_level": "warning"}, "--listen", "127.0.0.1:%d" % e2e.free_port())
    port = int(s.proc.args[-1].rsplit(":", 1)[1])
    s.wait(f"http://127.0.0.1:{port}", verify=True)  # the command line's --listen, not the file's
    assert s.stop() in (0, -15)
    assert "INFO" not in s.log.read_text()  # the file's log level


def test_install_unit_and_reissue_admin_token(tmp_path):
    env = e2e.clean_env(XDG_CONFIG_HOME=str(tmp_path / "config"), HOME=str(tmp_path / "home"))
    unit = tmp_path / "crowbar.service"
    r = subprocess.run([e2e.CROWBAR, "server", "install-unit", "--config", str(tmp_path / "c.toml"), "--user",
                        "crowbar", "--output", str(unit)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = unit.read_text()
    assert f"server --config {tmp_path / 'c.toml'}" in text and "User=crowbar" in text
    assert "Restart=on-failure" in text and "WantedBy=multi-user.target" in text
    if shutil.which("systemd-analyze"):
        check = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert "Unknown" not in check.stderr and "Invalid" not in check.stderr, check.stderr
    data = tmp_path / "data"
    data.mkdir()
    args = [e2e.CROWBAR, "server", "reissue-admin-token", "--data-dir", str(data)]
    first = subprocess.run(args, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    token1 = (data / "admin.token").read_text().strip()
    registry = tmp_path / "config" / "crowbar" / "endpoints"
    registry.mkdir(parents=True)
    (registry / "127.0.0.1_3000.token").write_text(token1 + "\n")
    (registry / "other.token").write_text("cb_someone_else\n")
    again = subprocess.run(args, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "1 CLI token file" in again.stdout, again.stdout + again.stderr
    token2 = (data / "admin.token").read_text().strip()
    assert token2 != token1 and (registry / "127.0.0.1_3000.token").read_text().strip() == token2
    assert (registry / "other.token").read_text().strip() == "cb_someone_else"
    assert token1 not in again.stdout + again.stderr and token2 not in again.stdout + again.stderr
