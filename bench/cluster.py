"""Several hosts on one machine (README "Several hosts"): two chatsvc instances behind nginx.

`make cluster` (or `python -m bench.cluster`) migrates the database once (`--seed`: and seeds
the knowledge base, as `make run` does), starts two gunicorn instances (gevent workers,
`gunicorn.conf.py`) on ports of their own sharing one PostgreSQL (`DATABASE_URL`) and one Redis
(`REDIS_URL`: the rate limiter's storage, and the turns' event log; a private `redis-server`
when unset), then nginx with `deploy/nginx/chatsvc.conf` (the file compose mounts) rendered with
the two instances as its round-robin upstream. Every response says which instance answered
(`X-Upstream`). An instance that dies leaves the other serving everything; Ctrl-C (or SIGTERM)
stops it all: nginx first, then the instances gracefully, then the Redis it started. Any other
setting passes to both instances from the environment (`AGENT_PROVIDER`, `RATELIMIT_CHAT`, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "deploy" / "nginx" / "chatsvc.conf"
BIN = Path(sys.executable).parent
INSTANCES = ("a", "b")
# The compose upstream: `server` lines naming the API replicas (each once, then each again as
# a backup), and the port nginx listens on.
UPSTREAM_SERVERS = re.compile(r"^( *)server api(\d+):8000((?: [^;\n]*)?);$", re.M)
LISTEN = "listen 8080;"


def render_site(template: str, ports: list[int], listen: int) -> str:
    """The committed site config with local instances as its upstream (replica N is the Nth
    port; each line keeps its parameters) and a local listen port."""
    replicas = {int(match.group(2)) for match in UPSTREAM_SERVERS.finditer(template)}
    if replicas != set(range(1, len(ports) + 1)) or template.count(LISTEN) != 1:
        raise ValueError("deploy/nginx/chatsvc.conf no longer has the expected upstream/listen")
    site = UPSTREAM_SERVERS.sub(
        lambda m: f"{m.group(1)}server 127.0.0.1:{ports[int(m.group(2)) - 1]}{m.group(3)};",
        template,
    )
    return site.replace(LISTEN, f"listen 127.0.0.1:{listen};")


def nginx_conf(prefix: Path, site: Path) -> str:
    """The main config: everything nginx writes stays under `prefix`, so it runs unprivileged."""
    temp_paths = "".join(
        f"  {kind}_temp_path {prefix}/temp/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        # As root, workers would run as nobody, who may not enter a private temporary folder.
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes 1;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        '  log_format upstream \'$remote_addr "$request" $status upstream=$upstream_addr '
        "request_id=$upstream_http_x_request_id $request_time';\n"
        f"  access_log {prefix}/access.log upstream;\n"
        + temp_paths
        # Which instance answered: a local development topology, so the address is no secret.
        + "  add_header X-Upstream $upstream_addr always;\n"
        f"  include {site};\n"
        "}\n"
    )


@dataclass
class Instance:
    name: str
    url: str
    pid: int
    log: str


@dataclass
class State:
    """What a started cluster is: printed, and written to --state-file for scripts and tests."""

    url: str
    instances: list[Instance]
    nginx_pid: int
    nginx_access_log: str
    redis_url: str
    redis_pid: int | None


class Cluster:
    """Also a library: the chaos soak (bench/soak, `--topology cluster`) starts one with its own
    environment (`env`, instead of this process's), kills an instance and restarts it."""

    def __init__(
        self,
        directory: Path,
        database_url: str,
        redis_url: str | None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.database_url = database_url
        self.redis_url = redis_url
        self.env = dict(os.environ if env is None else env)
        self.processes: list[tuple[str, subprocess.Popen]] = []  # in start order
        self.redis: subprocess.Popen | None = None
        self.instances: dict[str, Instance] = {}
        self.workers = 1

    def start(
        self, port: int, workers: int, seed: bool, instance_ports: list[int] | None = None
    ) -> State:
        if self.redis_url is None:
            self.redis_url = self.start_redis()
        self.flask("db", "upgrade")
        if seed:
            self.flask("kb", "seed")  # README and docs/ into an empty knowledge base
        ports = instance_ports or distinct_free_ports(len(INSTANCES), avoid={port})
        self.workers = workers
        instances = [
            self.start_instance(name, instance_port, workers)
            for name, instance_port in zip(INSTANCES, ports, strict=True)
        ]
        for instance in instances:
            self.wait_ready(instance)
        nginx = self.start_nginx(ports, port)
        return State(
            url=f"http://127.0.0.1:{port}",
            instances=instances,
            nginx_pid=nginx.pid,
            nginx_access_log=str(self.directory / "nginx" / "access.log"),
            redis_url=self.redis_url,
            redis_pid=self.redis.pid if self.redis else None,
        )

    def kill_instance(self, name: str) -> None:
        """A host failing: SIGKILL to the instance's whole process group (the gunicorn master
        and its workers, in a session of their own), nothing graceful."""
        process = self.process(f"instance {name}")
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def restart_instance(self, name: str) -> Instance:
        """The killed instance back on its port (its log goes on in the same file)."""
        old = self.instances[name]
        port = int(old.url.rsplit(":", 1)[1])
        self.processes = [(n, p) for n, p in self.processes if n != f"instance {name}"]
        instance = self.start_instance(name, port, self.workers)
        self.wait_ready(instance)
        return instance

    def process(self, name: str) -> subprocess.Popen:
        return next(p for n, p in self.processes if n == name)

    def worker_pids(self, name: str) -> list[int]:
        """The gunicorn workers of an instance: its master's children."""
        return children(self.process(f"instance {name}").pid)

    def instance_env(self, port: int, workers: int, name: str) -> dict[str, str]:
        metrics = self.directory / f"metrics-{name}"
        metrics.mkdir(exist_ok=True)
        return {
            "CHATSVC_ENV": "development",
            **self.env,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WEB_CONCURRENCY": str(workers),
            "DATABASE_URL": self.database_url,
            "RATELIMIT_STORAGE_URI": self.redis_url or "",
            "EVENTS_REDIS_URL": self.redis_url or "",
            # nginx is the one proxy in front, on this machine: trust its X-Forwarded-For.
            "PROXY_FIX_X_FOR": "1",
            "FORWARDED_ALLOW_IPS": "127.0.0.1",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        }

    def flask(self, *command: str) -> None:
        """A flask command on the shared database, once, before any instance starts."""
        env = {"CHATSVC_ENV": "development", **self.env, "DATABASE_URL": self.database_url}
        done = subprocess.run(
            [str(BIN / "flask"), "--app", "chatsvc", *command],
            cwd=REPO, env=env, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"flask {' '.join(command)} failed:\n{done.stderr[-3000:]}")

    def start_instance(self, name: str, port: int, workers: int) -> Instance:
        log = self.directory / f"instance-{name}.log"
        argv = [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", "wsgi:app"]
        process = self.spawn(f"instance {name}", argv, log, self.instance_env(port, workers, name))
        self.instances[name] = Instance(name, f"http://127.0.0.1:{port}", process.pid, str(log))
        return self.instances[name]

    def wait_ready(self, instance: Instance, seconds: float = 60) -> None:
        process = next(p for _, p in self.processes if p.pid == instance.pid)
        deadline = time.monotonic() + seconds
        while status(instance.url + "/health") != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = Path(instance.log).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"instance {instance.name} did not start:\n{tail}")
            time.sleep(0.1)

    def start_nginx(self, ports: list[int], port: int) -> subprocess.Popen:
        prefix = self.directory / "nginx"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / "temp" / kind).mkdir(parents=True, exist_ok=True)
        site = prefix / "chatsvc.conf"
        site.write_text(render_site(SITE.read_text(), ports, port))
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, site))
        command = [nginx_binary(), "-p", str(prefix), "-c", str(conf)]
        checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
        if checked.returncode:
            raise RuntimeError(f"nginx -t failed:\n{checked.stderr}")
        process = self.spawn("nginx", [*command, "-g", "daemon off;"], prefix / "stderr.log")
        deadline = time.monotonic() + 10
        while not listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not start: " + (prefix / "error.log").read_text())
            time.sleep(0.05)
        return process

    def start_redis(self) -> str:
        if shutil.which("redis-server") is None:
            raise RuntimeError("set REDIS_URL (or put redis-server on the PATH)")
        port = distinct_free_ports(1)[0]
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.directory)]  # fmt: skip
        self.redis = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while not listening(port):
            if self.redis.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        return f"redis://127.0.0.1:{port}/0"

    def spawn(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        # A session of its own: Ctrl-C reaches this script only, which stops the rest in order.
        # A file, not a pipe (a full pipe would block the server); appended: a restarted
        # instance goes on in its log.
        with open(log, "ab") as sink:
            process = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.processes.append((name, process))
        return process

    def exited(self) -> set[str]:
        """The names of the processes that stopped by themselves."""
        return {name for name, process in self.processes if process.poll() is not None}

    def watch(self) -> None:
        """Until nginx or every instance is gone. One instance gone is what a host failing
        looks like: nginx sends everything to the other, so the cluster goes on without it."""
        reported: set[str] = set()
        instances = {name for name, _ in self.processes if name != "nginx"}
        while "nginx" not in (gone := self.exited()) and not instances <= gone:
            for name in sorted(gone - reported):
                print(f"{name} exited: nginx sends its requests to the other", file=sys.stderr)
            reported |= gone
            time.sleep(0.2)
        print(f"{', '.join(sorted(gone))} exited: stopping the cluster", file=sys.stderr)

    def stop(self) -> None:
        """nginx first (no new requests), then both instances together (gracefully: each
        finishes its requests within GUNICORN_GRACEFUL_TIMEOUT), then the Redis started here."""
        nginx = [p for name, p in self.processes if name == "nginx"]
        instances = [p for name, p in self.processes if name != "nginx"]
        # nginx's graceful quit waits for every open stream (read timeouts are an hour): it gets
        # NGINX_QUIT_SECONDS, then it is killed; its clients see the connection end.
        stop_processes(nginx, signal.SIGQUIT, NGINX_QUIT_SECONDS)
        stop_processes(instances, signal.SIGTERM)
        if self.redis is not None:
            stop_processes([self.redis], signal.SIGTERM)


NGINX_QUIT_SECONDS = 10


def stop_processes(processes: list[subprocess.Popen], signum: int, seconds: float = 60) -> None:
    """Signal them all, then wait for each; killed when still there after `seconds`."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signum)
    deadline = time.monotonic() + seconds
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for status_file in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status_file.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("PPid:"):
                if int(line.split()[1]) == pid:
                    found.append(int(status_file.parent.name))
                break
    return sorted(found)


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    return found


def distinct_free_ports(count: int, avoid: set[int] | None = None) -> list[int]:
    """Ports nothing listens on; held open together, so no two are the same."""
    probes = []
    try:
        while len(probes) < count:
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            if probe.getsockname()[1] in (avoid or set()):
                probe.close()
                continue
            probes.append(probe)
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def describe(state: State) -> str:
    lines = [f"chatsvc cluster on {state.url} (nginx, round robin; X-Upstream names the instance)"]
    for instance in state.instances:
        lines.append(f"  instance {instance.name}: {instance.url}  log {instance.log}")
    lines.append(f"  nginx access log {state.nginx_access_log}")
    lines.append(f"  redis {state.redis_url}" + (" (started here)" if state.redis_pid else ""))
    lines.append("Ctrl-C stops all.")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--port", type=int, default=8080, help="nginx's port (default 8080)")
    parser.add_argument(
        "--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")),
        help="gevent workers per instance (default WEB_CONCURRENCY, else 1)",
    )  # fmt: skip
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or None)
    parser.add_argument(
        "--dir", type=Path, help="logs, nginx's files (default: bench/out/cluster, emptied)"
    )
    parser.add_argument("--state-file", type=Path, help="written (JSON) once the cluster is up")
    parser.add_argument(
        "--seed", action="store_true", help="ingest README and docs/ into an empty knowledge base"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.database_url.startswith("postgresql"):
        print("set DATABASE_URL to a PostgreSQL URL: the instances share it", file=sys.stderr)
        return 2
    directory = args.dir or REPO / "bench" / "out" / "cluster"
    if args.dir is None:
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    # Ctrl-C stops everything even when this was started with SIGINT ignored (a background job
    # of a non-interactive shell inherits that, as CI's nohup'd runs did); SIGTERM unwinds the
    # same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.default_int_handler(signum, frame))
    cluster = Cluster(directory, args.database_url, args.redis_url)
    try:
        state = cluster.start(args.port, args.workers, args.seed)
        print(describe(state), flush=True)
        if args.state_file:
            written = args.state_file.with_suffix(".tmp")
            written.write_text(json.dumps(asdict(state), indent=2))
            written.replace(args.state_file)  # readers never see half a file
        cluster.watch()
        return 1
    except KeyboardInterrupt:
        return 0
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        # Stopping takes a few seconds (turns in flight finish): a second Ctrl-C must not
        # leave half the cluster running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
