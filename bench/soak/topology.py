"""What the soak runs, and the faults it does to it.

Both topologies share a PostgreSQL database of the soak's own reached through a TCP proxy the
soak cuts, a redis-server of its own that it kills, and the fake model:

- `single`: one gunicorn with 2 gevent workers (the rate limiter in Redis, the turns' event
  log in the database).
- `cluster`: bench/cluster.py's two instances (2 gevent workers each) behind nginx round
  robin; Redis is also the event log and carries cancels (`EVENTS_REDIS_URL`), as on several
  hosts. One more fault: `kill_instance`.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psycopg
import requests
from sqlalchemy.engine import make_url

from bench import cluster, harness
from bench.soak.model import AGENT_TIMEOUT_S, MODEL_FAULTS, SoakModel
from tests.tcpproxy import TcpProxy

FAULTS = {
    "single": ("kill_worker", "cut_db", "kill_redis", *MODEL_FAULTS),
    "cluster": ("kill_worker", "kill_instance", "cut_db", "kill_redis", *MODEL_FAULTS),
}
ALL_FAULTS = FAULTS["cluster"]
CLUSTER_DIR = harness.LOGS / "soak-cluster"


class Redis:
    def __init__(self, tmp: Path) -> None:
        self.port = harness.free_port()
        self.tmp = tmp
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.tmp)]  # fmt: skip
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None


class Database:
    """A database of the soak's own on the given PostgreSQL server."""

    def __init__(self, url: str) -> None:
        base = make_url(url)
        self.name = f"soak_{uuid.uuid4().hex[:10]}"
        self.admin = base.set(drivername="postgresql", database="postgres")
        self.url = base.set(database=self.name)
        self.keep = False
        with self.connect(self.admin) as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')

    @staticmethod
    def connect(url) -> psycopg.Connection:  # noqa: ANN001
        return psycopg.connect(
            host=url.host, port=url.port or 5432, user=url.username, password=url.password,
            dbname=url.database, autocommit=True,
        )  # fmt: skip

    def via(self, port: int) -> str:
        return self.url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)

    def direct(self) -> str:
        return self.via(self.url.port or 5432)

    def drop(self) -> None:
        if self.keep:
            print(f"database kept: {self.direct()}", flush=True)
            return
        with self.connect(self.admin) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Topology:
    """The parts both topologies share; `start` builds one, `stop` removes all of it."""

    name = ""

    def __init__(self, tmp: Path, url: str, stale_seconds: int, chunk_delay: float) -> None:
        self.tmp = tmp
        self.lock = threading.Lock()  # a fault under way, or the stop
        self.stopped = False
        # how long a fault lasts, as a share of its full length (--fault-scale): the CI soak's
        # shorter faults still fail what they fail, in less of the run
        self.fault_scale = 1.0
        self.database = Database(url)
        self.model = self.proxy = self.redis = None
        try:
            self.model = SoakModel(chunk_delay)
            self.proxy = TcpProxy(self.database.url.port or 5432, self.database.url.host)
            self.redis = Redis(tmp)
        except BaseException:
            self.stop()
            raise
        self.env = {
            "CHATSVC_ENV": "production",
            "AUTH_MODE": "optional",
            "JWT_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
            "DATABASE_URL": self.database.via(self.proxy.port),
            "AGENT_PROVIDER": "openai",
            "OPENAI_BASE_URL": self.model.url,
            "OPENAI_API_KEY": "soak",
            "OPENAI_MODEL": "soak",
            "AGENT_TIMEOUT_SECONDS": str(AGENT_TIMEOUT_S),
            "AGENT_MAX_RETRIES": "0",  # the model's faults reach the turn
            "TURN_STALE_SECONDS": str(stale_seconds),
            "RATELIMIT_ENABLED": "true",
            "RATELIMIT_STORAGE_URI": self.redis.url,
            "RATELIMIT_CHAT": "100000 per minute",
            "RATELIMIT_DEFAULT": "100000 per minute",
            "WEB_CONCURRENCY": "2",
            "LOG_LEVEL": "INFO",
        }

    url: str  # where the clients go
    logs: list[Path]  # the service's logs (they stay after the run)

    def worker_pids(self) -> list[int]:
        raise NotImplementedError

    def stop_service(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        # a fault under way ends first (its waits return once the run's stop event is set): an
        # instance it is restarting must not come back after the stop
        acquired = self.lock.acquire(timeout=90)
        self.stopped = True
        for step in (self.stop_service, self.kill_redis, self.cut_proxy, self.close_model):
            try:
                step()
            except Exception as error:  # clean up the rest regardless
                print(f"cleanup: {step.__name__} failed: {error!r}", flush=True)
        self.database.drop()
        if acquired:
            self.lock.release()

    def fault(self, fault: str, rng: random.Random, stop: threading.Event) -> None:
        with self.lock:
            if not self.stopped:
                self.inject(fault, rng, stop)

    def kill_redis(self) -> None:
        if self.redis is not None:
            self.redis.kill()

    def cut_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.cut()

    def close_model(self) -> None:
        if self.model is not None:
            self.model.close()

    def heal(self) -> None:
        """Everything back as at the start (a fault may have been under way at the end)."""
        if self.proxy._listener is None:
            self.proxy.restore()
        if self.redis.process is None:
            self.redis.start()
        self.model.mode = "ok"

    def inject(self, fault: str, rng: random.Random, stop: threading.Event) -> None:
        if fault == "kill_worker":
            workers = self.worker_pids()
            if workers:
                os.kill(rng.choice(workers), signal.SIGKILL)
        elif fault == "cut_db":
            self.proxy.cut()
            self.hold(stop, rng, 3, 6)
            self.proxy.restore()
        elif fault == "kill_redis":
            self.redis.kill()
            self.hold(stop, rng, 2, 5)
            self.redis.start()
        elif fault in MODEL_FAULTS:
            self.model.mode = fault
            self.hold(stop, rng, 4, 8)
            self.model.mode = "ok"
        else:
            raise ValueError(f"{self.name} topology has no fault {fault}")

    def hold(self, stop: threading.Event, rng: random.Random, low: float, high: float) -> None:
        """A fault's length: `low` to `high` seconds, times the fault scale."""
        stop.wait(rng.uniform(low, high) * self.fault_scale)


class Single(Topology):
    name = "single"

    def __init__(self, tmp: Path, url: str, stale_seconds: int) -> None:
        super().__init__(tmp, url, stale_seconds, chunk_delay=0.0)
        self.service = None
        metrics = tmp / "metrics"
        metrics.mkdir()
        self.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
        try:
            harness.migrate({**self.env, "DATABASE_URL": self.database.direct()})
            subprocess.run(
                [str(harness.BIN / "flask"), "--app", "chatsvc", "kb", "seed"],
                cwd=harness.REPO, env={**os.environ, **self.env}, check=True,
                capture_output=True,
            )  # fmt: skip
            self.service = harness.start_chatsvc(self.env, name="soak-chatsvc")
        except BaseException:
            self.stop()
            raise
        self.url = self.service.url
        self.logs = [self.service.log]

    def worker_pids(self) -> list[int]:
        return self.service.worker_pids()

    def stop_service(self) -> None:
        if getattr(self, "service", None) is not None:
            self.service.stop()


class Cluster(Topology):
    name = "cluster"

    def __init__(self, tmp: Path, url: str, stale_seconds: int, port: int) -> None:
        # streamed answers take a moment: a client leaving after the first delta leaves a turn
        # still running, and its resume follows it live
        super().__init__(tmp, url, stale_seconds, chunk_delay=0.08)
        shutil.rmtree(CLUSTER_DIR, ignore_errors=True)
        CLUSTER_DIR.mkdir(parents=True)
        self.env["EVENTS_REDIS_URL"] = self.redis.url  # also set by bench/cluster.py
        self.cluster = cluster.Cluster(
            CLUSTER_DIR, self.database.via(self.proxy.port), self.redis.url,
            env={**os.environ, **self.env},
        )  # fmt: skip
        try:
            ports = [port + 1, port + 2]
            state = self.cluster.start(port, workers=2, seed=True, instance_ports=ports)
        except BaseException:
            self.stop()
            raise
        self.url = state.url
        self.logs = [Path(instance.log) for instance in state.instances]

    def worker_pids(self) -> list[int]:
        return [pid for name in cluster.INSTANCES for pid in self.cluster.worker_pids(name)]

    def stop_service(self) -> None:
        if getattr(self, "cluster", None) is not None:
            self.cluster.stop()

    def inject(self, fault: str, rng: random.Random, stop: threading.Event) -> None:
        if fault == "kill_instance":
            name = rng.choice(cluster.INSTANCES)
            self.cluster.kill_instance(name)
            self.hold(stop, rng, 3, 6)
            self.cluster.restart_instance(name)
        else:
            super().inject(fault, rng, stop)
        if fault in ("kill_worker", "kill_instance"):
            self.whole(stop)

    def whole(self, stop: threading.Event, seconds: float = 30) -> None:
        """One host failure at a time: until nginx sends requests to both instances again.
        A request an instance failed (a killed worker's) takes it out of nginx's rotation for
        `fail_timeout` (10 s, `max_fails=1`); a second failure on the other instance within
        that window leaves only the upstream's backup entries (deploy/nginx/chatsvc.conf)."""
        names = {i.url.removeprefix("http://") for i in self.cluster.instances.values()}
        answered: list[str] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not stop.is_set():
            try:
                response = requests.get(self.url + "/health/live", timeout=5)
                answered.append(response.headers.get("X-Upstream", "").split(", ")[-1])
            except requests.RequestException:
                answered.append("")
            if set(answered[-2:]) == names:
                return
            stop.wait(0.2)


def start(topology: str, tmp: Path, url: str, stale_seconds: int, port: int) -> Topology:
    if topology == "cluster":
        return Cluster(tmp, url, stale_seconds, port)
    return Single(tmp, url, stale_seconds)
