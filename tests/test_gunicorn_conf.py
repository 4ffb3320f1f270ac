"""gunicorn.conf.py: what it changes in the worker's process, checked in a fresh interpreter
(the monkey-patching must not leak into the test process)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from helpers import children

REPO = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent(
    """
    import runpy, socket, sys
    config = runpy.run_path("gunicorn.conf.py")
    sys.path.insert(0, ".")
    config["post_worker_init"](None)                     # as a worker does once it has booted
    import gevent.select, httpcore2._utils as utils
    from gevent import monkey
    assert monkey.is_module_patched("select")           # psycopg's waits still cooperate
    assert utils.select.poll is monkey.get_original("select", "poll")
    assert utils.select.poll is not gevent.select.poll
    ours, theirs = socket.socketpair()
    assert not utils.is_socket_readable(ours)            # an idle keep-alive connection
    theirs.sendall(b"x")
    assert utils.is_socket_readable(ours)
    ours.recv(1)
    theirs.close()
    assert utils.is_socket_readable(ours)                # the server hung up: not reused
    print("ok")
    """
)


def test_httpcore_probes_idle_connections_with_the_system_poll(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


WORKER = textwrap.dedent(
    """
    import gc, os, runpy, sys, weakref
    config = runpy.run_path("gunicorn.conf.py")
    sys.path.insert(0, ".")
    from chatsvc import create_app
    app = create_app()                                   # what the worker loads
    config["post_worker_init"](None)
    assert gc.get_freeze_count() > 50_000                # the app's objects: not walked again
    from chatsvc import speedups
    assert gc.get_threshold()[0] == speedups.GC_YOUNG_THRESHOLD

    class Node:
        pass

    node = Node()
    node.self = node                                     # garbage only the collector frees
    alive = weakref.ref(node)
    del node
    gc.collect()
    assert alive() is None                               # new garbage is still collected
    print("ok")
    """
)


def test_a_worker_freezes_what_it_loaded_and_still_collects_new_garbage(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WORKER],
        cwd=REPO,
        env={
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
            "PATH": "/usr/bin:/bin",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'worker.db'}",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def _listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:`port` (/proc/net/tcp state 0A)."""
    local = f"0100007F:{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1] == local and row.split()[3] == "0A")


def _sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


def test_two_workers_each_take_an_even_share_of_a_burst_of_connections(gunicorn) -> None:
    """Each worker listens on its own SO_REUSEPORT socket and the kernel spreads connections
    over them. On one shared socket a burst went to whichever worker woke first (up to 75 of
    100), and a kept-alive connection stays with the worker that took it."""
    server = gunicorn(WEB_CONCURRENCY="2")
    port = int(server.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 30
    while _listeners(port) < 2 or len(children(server.process.pid)) < 2:
        assert time.monotonic() < deadline, "both workers should listen"
        time.sleep(0.1)
    assert _listeners(port) == 2  # a socket each, none in the master
    workers = children(server.process.pid)
    before = {pid: _sockets(pid) for pid in workers}
    burst = []
    try:
        for _ in range(200):
            connection = socket.socket()
            connection.setblocking(False)
            connection.connect_ex(("127.0.0.1", port))
            burst.append(connection)
        deadline = time.monotonic() + 10
        while sum(_sockets(pid) - before[pid] for pid in workers) < 200:
            assert time.monotonic() < deadline, "the workers should accept the burst"
            time.sleep(0.05)
        taken = sorted(_sockets(pid) - before[pid] for pid in workers)
    finally:
        for connection in burst:
            connection.close()
    assert taken[0] >= 70, taken  # of 200; binomial odds of fewer than 70: about 1 in 100 000
