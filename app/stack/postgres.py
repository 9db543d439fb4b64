"""Local PostgreSQL 15 from Debian packages, in a data directory of the project's, on a port of its own.

The server refuses to run as root, so when we are root it runs as the ``postgres`` system user
(created by the Debian package); otherwise it runs as the current user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from app.config import Settings
from app.stack.common import (
    ServiceStatus,
    StackError,
    pid_alive,
    port_open,
    read_pid,
    rss_bytes,
    run_checked,
    tail,
)

DEBIAN_PACKAGE = "postgresql-15"


class LocalPostgres:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.home / "postgres"
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log_file = self.root / "log" / "postgres.log"
        self.bin = settings.pg_bin_dir

    # ---------------------------------------------------------------- install

    def installed(self) -> bool:
        return all((self.bin / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))

    def install(self, progress: bool = True) -> bool:
        """Install the server from Debian packages if it is missing. Returns True if it installed."""
        if self.installed():
            return False
        apt = shutil.which("apt-get")
        if apt is None:
            raise StackError(
                f"PostgreSQL 15 server not found in {self.bin} and apt-get is unavailable; "
                f"install {DEBIAN_PACKAGE} or set OBSERVER_PG_BIN_DIR"
            )
        if os.geteuid() != 0:
            raise StackError(
                f"PostgreSQL 15 server not found in {self.bin}; run as root once "
                f"(sudo apt-get install -y {DEBIAN_PACKAGE}) or set OBSERVER_PG_BIN_DIR"
            )
        if progress:
            print(f"postgres: installing {DEBIAN_PACKAGE} from Debian packages (first time only)...", flush=True)
        log = self.root / "log" / "install.log"
        env_cmd = ["env", "DEBIAN_FRONTEND=noninteractive"]
        run_checked([*env_cmd, apt, "-q", "update"], what="apt-get update", log_file=log)
        run_checked(
            [*env_cmd, apt, "-q", "install", "-y", "--no-install-recommends", DEBIAN_PACKAGE],
            what=f"apt-get install {DEBIAN_PACKAGE}",
            log_file=log,
        )
        if not self.installed():
            raise StackError(f"{DEBIAN_PACKAGE} installed but {self.bin}/initdb is missing; set OBSERVER_PG_BIN_DIR")
        return True

    # ---------------------------------------------------------------- helpers

    def _run_user(self) -> str | None:
        """The OS user the server runs as: ``postgres`` when we are root, else ourselves (None)."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise StackError(
                f"running as root but the 'postgres' system user does not exist; reinstall {DEBIAN_PACKAGE}"
            ) from None
        return "postgres"

    def _as_server_user(self, args: list[str]) -> list[str]:
        user = self._run_user()
        return ["runuser", "-u", user, "--", *args] if user else args

    def _chown(self, path: Path) -> None:
        user = self._run_user()
        if user:
            pw = pwd.getpwnam(user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _initdb_once(self) -> None:
        if (self.data_dir / "PG_VERSION").is_file():
            return
        for d in (self.root, self.data_dir, self.socket_dir, self.log_file.parent):
            d.mkdir(parents=True, exist_ok=True)
            self._chown(d)
        self.data_dir.chmod(0o700)
        run_checked(
            self._as_server_user(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "-U",
                    "postgres",
                ]
            ),
            what="initdb",
            log_file=self.root / "initdb.log",
            timeout=120,
        )

    def pid(self) -> int | None:
        pid = read_pid(self.data_dir / "postmaster.pid")
        return pid if pid is not None and pid_alive(pid) else None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> str:
        s = self.settings
        pid = self.pid()
        if pid is not None:
            self._ensure_database()
            return f"postgres: already running (pid {pid}) on {s.pg_host}:{s.pg_port}"
        if port_open(s.pg_host, s.pg_port):
            raise StackError(
                f"port {s.pg_host}:{s.pg_port} is in use by another process; stop it or set "
                f"OBSERVER_PG_PORT to a free port"
            )
        self.install()
        self._initdb_once()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._chown(self.log_file.parent)
        started = time.monotonic()
        opts = f"-p {s.pg_port} -k {self.socket_dir} -c listen_addresses={s.pg_host}"
        try:
            run_checked(
                self._as_server_user(
                    [
                        str(self.bin / "pg_ctl"),
                        "-D",
                        str(self.data_dir),
                        "-l",
                        str(self.log_file),
                        "-w",
                        "-t",
                        "60",
                        "-o",
                        opts,
                        "start",
                    ]
                ),
                what="pg_ctl start",
                timeout=90,
            )
        except StackError as exc:
            last = tail(self.log_file, 5)
            raise StackError(f"{exc}; server log says: {' | '.join(last[-2:]) or 'nothing'}") from None
        self._ensure_database()
        return f"postgres: started (pid {self.pid()}) on {s.pg_host}:{s.pg_port} in {time.monotonic() - started:.1f} s"

    def _ensure_database(self) -> None:
        """Create the project's role and database if missing (idempotent)."""
        import psycopg  # local: keeps CLI start-up light
        from psycopg import sql

        s = self.settings
        with psycopg.connect(
            host=s.pg_host, port=s.pg_port, dbname="postgres", user="postgres", autocommit=True, connect_timeout=10
        ) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (s.pg_user,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(s.pg_user)))
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (s.pg_database,)).fetchone() is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(s.pg_database), sql.Identifier(s.pg_user)
                    )
                )

    def stop(self) -> str:
        pid = self.pid()
        if pid is None:
            return "postgres: not running"
        run_checked(
            self._as_server_user(
                [str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop"]
            ),
            what="pg_ctl stop",
            timeout=90,
        )
        return f"postgres: stopped (pid {pid})"

    def status(self) -> ServiceStatus:
        s = self.settings
        pid = self.pid()
        if pid is None:
            return ServiceStatus("postgres", False, "not running")
        ready = (
            subprocess.run(
                [str(self.bin / "pg_isready"), "-h", s.pg_host, "-p", str(s.pg_port)], capture_output=True, check=False
            ).returncode
            == 0
        )
        state = "accepting connections" if ready else "NOT accepting connections"
        return ServiceStatus(
            "postgres",
            ready,
            f"PostgreSQL 15 on {s.pg_host}:{s.pg_port} db {s.pg_database}, {state}",
            pid=pid,
            rss_bytes=rss_bytes(pid),
        )
