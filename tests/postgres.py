"""A throwaway PostgreSQL 15 cluster for the fleet tests, from Debian's binaries.

``initdb`` + ``pg_ctl -l logfile start`` on a free loopback port in a temp dir (``-l`` so the server
never holds the test's pipes). As root the cluster belongs to the ``postgres`` user, since
PostgreSQL refuses to run as root. If it cannot start, ``PostgresError`` says why: the fleet tests
fail loudly rather than skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "compass-test"


class PostgresError(RuntimeError):
    pass


def bindir() -> Path:
    """Where initdb and pg_ctl live: ``pg_config --bindir``, else Debian's versioned path."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for path in candidates:
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    raise PostgresError(
        "PostgreSQL server binaries not found (initdb/pg_ctl); install Debian's postgresql-15 (.ci/run does)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    port: int
    bin: Path
    as_postgres: bool

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "compass", password: str = PASSWORD) -> str:
        return f"postgresql://compass:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            what = f"{' '.join(argv)} failed ({result.returncode})"
            raise PostgresError(f"{what}: {result.stderr.strip()}\n{tail}")
        return result

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "compass", "--auth=scram-sha-256",
            f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        self.start_server()
        self.psql("CREATE DATABASE compass")

    def start_server(self) -> None:
        """``pg_ctl start`` on the existing data directory (also after ``stop_server``)."""
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root}"
        opts += " -c fsync=off"  # a throwaway cluster: durability is not what these tests measure
        pg_ctl = str(self.bin / "pg_ctl")
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")

    def stop_server(self, mode: str = "fast") -> None:
        """``pg_ctl stop``: ``fast`` ends every session (a restart's first half); the data stays."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def psql(self, sql: str, database: str = "postgres") -> str:
        psql = ["env", f"PGPASSWORD={PASSWORD}", str(self.bin / "psql"), "-h", "127.0.0.1"]
        psql += ["-p", str(self.port)]
        return self._run(*psql, "-U", "compass", "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql).stdout

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except PostgresError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> Cluster:
    as_postgres = os.geteuid() == 0
    if as_postgres:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresError("running as root but there is no 'postgres' user to own the cluster") from exc
    root = Path(tempfile.mkdtemp(prefix="compass-pg-"))
    cluster = Cluster(root=root, port=free_port(), bin=bindir(), as_postgres=as_postgres)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # -w waited for the postmaster; make sure TCP answers too
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", cluster.port)) == 0:
                return cluster
        time.sleep(0.05)
    cluster.stop()
    raise PostgresError(f"PostgreSQL did not listen on 127.0.0.1:{cluster.port}")
