"""A shared store on this machine: PostgreSQL (Debian's `postgresql` package) and `mlflow server` over it, both on
loopback, with their data in one folder (`rnnlab store up --dir DIR` / `rnnlab store down --dir DIR`).

Layout of `DIR`: `postgres/` (the database cluster), `artifacts/` (what the server's artifact proxy stores: runs
carry `mlflow-artifacts:/` locations, so clients on other machines read them through the server), `logs/`
(`postgres.log`, `mlflow.log`), and `store.json` (ports, pids, the database password; readable by its owner
only). Workers and dashboards use the printed `MLFLOW_TRACKING_URI=http://127.0.0.1:PORT`: the server is the
only client of the database, so any number of processes, Ray tasks or dashboards can write at once.

PostgreSQL refuses to run as root; as root the cluster belongs to the `postgres` user the package creates (so
`DIR` must be a folder that user can reach, e.g. under /tmp or /srv).
"""

import dataclasses
import glob
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from rnnlib.core.errors import TrackingError

STATE_FILE = "store.json"
DATABASE, ROLE = "mlflow", "rnnlab"
START_SECONDS = 120  # a first start creates MLflow's tables in the new database


@dataclasses.dataclass
class SharedStore:
    folder: Path
    host: str
    port: int  # the tracking server's
    database_port: int
    password: str
    server_pid: int = 0

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def database_uri(self) -> str:
        return f"postgresql+psycopg2://{ROLE}:{self.password}@127.0.0.1:{self.database_port}/{DATABASE}"

    @property
    def data(self) -> Path:
        return self.folder / "postgres"


def postgres_binaries() -> Path:
    """The folder holding PostgreSQL's server programs (`initdb`, `pg_ctl`)."""
    for candidate in [os.environ.get("RNNLAB_PG_BINDIR", ""), *sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                                                      reverse=True)]:
        if candidate and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise TrackingError("PostgreSQL is not installed: `sudo apt-get install postgresql` (Debian/Ubuntu), or set "
                        "RNNLAB_PG_BINDIR to the folder holding its pg_ctl.")


def up(folder, port: int = 5000, database_port: int = 0, host: str = "127.0.0.1") -> SharedStore:
    """Start (creating on first use) the database in `folder` and a tracking server over it; returns the store.
    Already running: returns it as it is."""
    folder = Path(folder).expanduser().resolve()
    running = status(folder)
    if running is not None:
        return running
    if importlib.util.find_spec("psycopg2") is None:  # mlflow server's PostgreSQL driver
        raise TrackingError("The PostgreSQL driver is missing: `.venv/bin/pip install -r requirements.txt` "
                            "(psycopg2-binary).")
    binaries = postgres_binaries()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    (folder / "artifacts").mkdir(exist_ok=True)
    state = _read_state(folder)
    store = SharedStore(folder, host, port, database_port or state.get("database_port") or _free_port(),
                        state.get("password") or secrets.token_urlsafe(18))
    owner = _database_owner()
    fresh = not (store.data / "PG_VERSION").exists()
    if fresh:
        _create_cluster(store, binaries, owner)
    _write_state(store)
    log = folder / "logs" / "postgres.log"
    if owner:
        shutil.chown(log.parent, owner)
    if not _database_running(binaries, owner, store.data):
        _as(owner, [str(binaries / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(store.data), "-l", str(log),
                    "-o", f"-p {store.database_port} -c listen_addresses=127.0.0.1 -k ''"],
            f"PostgreSQL did not start; see {log}")
    if fresh:
        _as(owner, [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(store.database_port), "-U", ROLE,
                    DATABASE], "could not create the mlflow database", {"PGPASSWORD": store.password})
    if _port_taken(host, port):
        down(folder)
        raise TrackingError(f"Port {port} on {host} is taken: choose another with --port.")
    with open(folder / "logs" / "mlflow.log", "ab") as server_log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
             "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts", "--workers", "2",
             "--app-name", "rnnlab"],  # MLflow's server with Compare's bulk reads (rnnlib.tracking.server_app)
            env={**os.environ, "MLFLOW_BACKEND_STORE_URI": store.database_uri},  # not in `ps`: it holds the password
            stdout=server_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    store.server_pid = server.pid
    _write_state(store)
    deadline = time.monotonic() + START_SECONDS
    while not _healthy(store.tracking_uri):
        if server.poll() is not None or time.monotonic() > deadline:
            down(folder)
            raise TrackingError(f"mlflow server did not start; see {folder / 'logs' / 'mlflow.log'}")
        time.sleep(0.5)
    return store


def down(folder) -> bool:
    """Stop the tracking server and the database of `folder`; the data stays. False when nothing was running."""
    folder = Path(folder).expanduser().resolve()
    state = _read_state(folder)
    if not state:
        return False
    stopped = False
    pid = state.get("server_pid") or 0
    if pid and _alive(pid):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
        stopped = True
    data, owner, binaries = folder / "postgres", _database_owner(), postgres_binaries()
    if _database_running(binaries, owner, data):
        _as(owner, [str(binaries / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(data)],
            "PostgreSQL did not stop")
        stopped = True
    state["server_pid"] = 0
    _write_json(folder, state)
    return stopped


def status(folder) -> SharedStore | None:
    """The store in `folder` when its server answers, else None."""
    folder = Path(folder).expanduser().resolve()
    state = _read_state(folder)
    if not state or not state.get("server_pid") or not _alive(state["server_pid"]):
        return None
    store = SharedStore(folder, state["host"], state["port"], state["database_port"], state["password"],
                        state["server_pid"])
    return store if _healthy(store.tracking_uri) else None


def _create_cluster(store: SharedStore, binaries: Path, owner: str | None) -> None:
    if owner and subprocess.run(_as_owner(owner, ["test", "-w", str(store.folder)]),
                                capture_output=True).returncode != 0:
        shutil.chown(store.folder, owner)
        if subprocess.run(_as_owner(owner, ["test", "-x", str(store.folder)]), capture_output=True).returncode != 0:
            raise TrackingError(f"PostgreSQL runs as the {owner!r} user, who cannot reach {store.folder}: choose a "
                                "folder under /tmp or /srv, or open up its parent folders (chmod o+x).")
    store.data.mkdir(mode=0o700, exist_ok=True)
    secret = store.folder / ".pwfile"
    secret.write_text(store.password + "\n")
    secret.chmod(0o600)
    if owner:
        for path in (store.data, secret):
            shutil.chown(path, owner)
    try:
        _as(owner, [str(binaries / "initdb"), "-D", str(store.data), "-U", ROLE, f"--pwfile={secret}",
                    "--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--no-instructions"],
            "initdb failed")
    finally:
        secret.unlink(missing_ok=True)


def _database_running(binaries: Path, owner: str | None, data: Path) -> bool:
    if not (data / "postmaster.pid").exists():
        return False
    return subprocess.run(_as_owner(owner, [str(binaries / "pg_ctl"), "status", "-D", str(data)]),
                          capture_output=True, cwd="/").returncode == 0


def _database_owner() -> str | None:
    """Who runs PostgreSQL: this user, or as root the package's `postgres` user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        raise TrackingError("PostgreSQL does not run as root and there is no `postgres` user: install Debian's "
                            "postgresql package, or run `rnnlab store up` as an ordinary user.") from None


def _as_owner(owner: str | None, command: list[str]) -> list[str]:
    """`command` run as the database's owner (`_database_owner`), or as this user."""
    return ["runuser", "-u", owner, "--", *command] if owner else command


def _as(owner: str | None, command: list[str], failure: str, env: dict | None = None) -> None:
    result = subprocess.run(_as_owner(owner, command), capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, cwd="/", timeout=120)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise TrackingError(f"{failure}: {detail[0]}")


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own child that was not waited for) is gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def _read_state(folder: Path) -> dict:
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(store: SharedStore) -> None:
    _write_json(store.folder, {"host": store.host, "port": store.port, "database_port": store.database_port,
                               "password": store.password, "server_pid": store.server_pid,
                               "tracking_uri": store.tracking_uri})


def _write_json(folder: Path, state: dict) -> None:
    path = folder / STATE_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=1))
    temporary.chmod(0o600)
    temporary.replace(path)
