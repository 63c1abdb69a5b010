"""nginx in front of real `studyhall serve` processes, for tests/test_deploy_*.py.

`render_nginx` writes deploy/nginx/studyhall.conf and its locations snippet into a temp
prefix as they ship, swapping only what must differ on a test machine (ports, paths, the
certificate), and failing if any of those lines is no longer in the shipped file, so the
test cannot drift from what operators install. Its access log records, per request, the
client address nginx settled on and the instance it chose: how the tests see stickiness.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from storage.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
NGINX_DIR = ROOT / "deploy" / "nginx"
LOG_FORMAT = '$msec $remote_addr "$request" $status "$upstream_addr" $upstream_cache_status'


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not found:
        raise RuntimeError("nginx is not installed. Run the README's test command (it installs it).")
    return found


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (the clients are told not to verify it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "studyhall.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def _swap(text: str, pattern: str, replacement: str, count: int = 1) -> str:
    new, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert n == count, f"deploy/nginx: expected {count} line(s) matching {pattern!r}, found {n}"
    return new


def render_nginx(prefix: Path, *, upstreams: list[int], http_port: int, https_port: int, sticky: bool = True) -> Path:
    """The shipped configuration under `prefix`, listening on loopback test ports, with its
    instances at `upstreams`. Its commented real_ip lines are switched on for 127.0.0.1: the
    test's clients stand behind a "front load balancer" there and name themselves in
    X-Forwarded-For, which is how they spread over the instances from one machine.
    `sticky=False` drops the `hash` line (the control that shows what stickiness does)."""
    for sub in ("tmp", "cache"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(prefix / sub, 0o777)  # nginx's workers run as another user under root
    cert, key = self_signed(prefix)
    locations = prefix / "studyhall-locations.conf"
    shutil.copy(NGINX_DIR / "studyhall-locations.conf", locations)
    conf = (NGINX_DIR / "studyhall.conf").read_text()
    servers = re.findall(r"^([ \t]*server 127\.0\.0\.1:)\d+( .*;)$", conf, flags=re.MULTILINE)
    assert len(servers) == 2, "deploy/nginx/studyhall.conf: expected two instance lines in the upstream"
    lead, params = servers[0]
    conf = _swap(conf, r"^[ \t]*server 127\.0\.0\.1:\d+ .*;\n", "", count=2)
    upstream_lines = "".join(f"{lead}{port}{params}\n" for port in upstreams)
    conf = _swap(conf, r"^([ \t]*keepalive \d+;)$", upstream_lines.rstrip("\n").replace("\\", "\\\\") + "\n\\1")
    if not sticky:
        conf = _swap(conf, r"^[ \t]*hash \$remote_addr consistent;$", "")
    conf = _swap(conf, r"^# set_real_ip_from .*$", "set_real_ip_from 127.0.0.1;")
    conf = _swap(conf, r"^# (real_ip_header X-Forwarded-For;)$", r"\1")
    conf = _swap(conf, r"^# (real_ip_recursive on;)$", r"\1")
    conf = _swap(conf, r"^[ \t]*listen \[::\]:\d+.*;$", "", count=2)
    conf = _swap(conf, r"^([ \t]*)listen 80;$", rf"\1listen 127.0.0.1:{http_port};")
    conf = _swap(conf, r"^([ \t]*)listen 443 (ssl http2);$", rf"\1listen 127.0.0.1:{https_port} \2;")
    conf = _swap(conf, r"/etc/letsencrypt/live/[^/]+/fullchain\.pem", str(cert))
    conf = _swap(conf, r"/etc/letsencrypt/live/[^/]+/privkey\.pem", str(key))
    conf = _swap(conf, r"/var/cache/nginx/studyhall", str(prefix / "cache"))
    conf = _swap(conf, r"/etc/nginx/snippets/studyhall-locations\.conf", str(locations))
    (prefix / "studyhall.conf").write_text(conf)
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    tmp = prefix / "tmp"
    main = prefix / "nginx.conf"
    main.write_text(
        f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        + "".join(f"  {kind}_temp_path {tmp}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        + f"  log_format deploy_test '{LOG_FORMAT}';\n"
        f"  access_log {prefix}/access.log deploy_test;\n"
        f"  include {prefix}/studyhall.conf;\n"
        "}\n"
    )
    return main


@dataclass(frozen=True)
class Hit:
    """One line of the test's access log."""

    at: float
    client: str
    request: str
    status: int
    upstream: str
    cache: str


@dataclass
class Nginx:
    prefix: Path
    upstreams: list[int]
    sticky: bool = True
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def start(self) -> Nginx:
        conf = render_nginx(self.prefix, upstreams=self.upstreams, http_port=self.http_port,
                            https_port=self.https_port, sticky=self.sticky)
        self.process = subprocess.Popen(
            [nginx_binary(), "-p", str(self.prefix), "-e", str(self.prefix / "error.log"), "-c", str(conf),
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.process.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                with socket.create_connection(("127.0.0.1", self.https_port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def hits(self) -> list[Hit]:
        path = self.prefix / "access.log"
        if not path.exists():
            return []
        found = []
        for line in path.read_text().splitlines():
            m = re.match(r'(\S+) (\S+) "([^"]*)" (\d+) "([^"]*)" (\S+)', line)
            if m:
                found.append(Hit(float(m[1]), m[2], m[3], int(m[4]), m[5], m[6]))
        return found

    def instance_for(self, address: str) -> int:
        """The instance port nginx sends a client at `address` to (asked with /api/health)."""
        request = urllib.request.Request(f"{self.url}/api/health", headers={"X-Forwarded-For": address})
        with urllib.request.urlopen(request, context=insecure_tls(), timeout=5) as response:
            assert response.status == 200
        deadline = time.monotonic() + 5  # nginx logs a request just after answering it
        while not (hits := [h for h in self.hits() if h.client == address and "/api/health" in h.request]):
            assert time.monotonic() < deadline, f"no access log line for {address}"
            time.sleep(0.01)
        return int(hits[-1].upstream.rsplit(":", 1)[1])


def insecure_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
