"""A real PostgreSQL server of a test's own: initdb into a fresh directory, ``postgres`` on a port, stopped by pid.

PostgreSQL refuses to run as root, so as root the server runs as ``nobody``
(the data directory is made for it, outside root-only temporary paths).
``netns`` runs it inside a network namespace a test made (tests/natlab).
"""

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

START_SECONDS = 30


def postgres_bin(name: str) -> str | None:
    """PostgreSQL's ``initdb`` or ``postgres``: on PATH, else where Debian's postgresql package puts it."""
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)


def missing_reason() -> str | None:
    """Why a PostgreSQL test cannot run here, or None."""
    if postgres_bin("initdb") is None or postgres_bin("postgres") is None:
        return "PostgreSQL (initdb, postgres) is not installed: scripts/setup --test installs it"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install '.[postgresql]'"
    return None


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; ``url`` names its database ``accounts``."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, netns: str | None = None) -> None:
        from tests.conftest import free_port

        self.host = host
        self.port = port or (5432 if netns else free_port(ips=(host,)))
        self.netns = netns
        self.directory = Path(tempfile.mkdtemp(prefix="txrendezvous-pg-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self.process: subprocess.Popen | None = None
        self.user = "nobody" if os.geteuid() == 0 else None
        if self.user:
            os.chown(self.directory, 65534, 65534)
        subprocess.run([postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync",
                        "-E", "UTF8"], check=True, capture_output=True, user=self.user, cwd=self.directory)
        with open(self.data / "pg_hba.conf", "a") as hba:  # it listens only on host: trust what reaches it
            hba.write("host all all 0.0.0.0/0 trust\n")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/accounts"

    def start(self) -> None:
        """Start the server (again, on the same data) and wait until it answers; the first time make the database."""
        command = [postgres_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.directory),
                   "-c", f"listen_addresses={self.host}", "-c", "fsync=off",
                   "-c", "full_page_writes=off"]
        user = self.user
        if self.netns:  # entering the namespace needs root: drop to the user after, in place (same pid)
            drop = ["setpriv", f"--reuid={user}", "--regid=65534", "--clear-groups"] if user else []
            command, user = ["ip", "netns", "exec", self.netns, *drop, *command], None
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, user=user,
                                            cwd=self.directory)
        self._wait()

    def _wait(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log_path.read_text(errors='replace')}")
            try:
                with psycopg.connect(f"host={self.directory} port={self.port} user=postgres dbname=postgres",
                                     autocommit=True, connect_timeout=2) as connection:
                    if connection.execute("SELECT 1 FROM pg_database WHERE datname='accounts'").fetchone() is None:
                        connection.execute("CREATE DATABASE accounts")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"postgres did not answer:\n{self.log_path.read_text(errors='replace')}")
                time.sleep(0.1)

    def sql(self, statement: str) -> list[tuple]:
        """Run one statement in the accounts database, over the local socket."""
        import psycopg

        with psycopg.connect(f"host={self.directory} port={self.port} user=postgres dbname=accounts",
                             autocommit=True) as connection:
            cursor = connection.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def kill(self) -> None:
        """SIGKILL the server we started (a crash); start() brings it back."""
        if self.process is not None and self.process.poll() is None:
            children = self._children()
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            deadline = time.monotonic() + 10  # its backends exit when they see it gone
            while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
                time.sleep(0.05)

    def _children(self) -> list[int]:
        found = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                found.append(int(Path(stat).parent.name))
        return found

    def stop(self) -> None:
        """Fast shutdown (SIGINT) of the server we started, by its pid; SIGKILL after 10 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
