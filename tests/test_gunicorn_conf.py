"""gunicorn.conf.py: what it changes in the worker's process, checked in a fresh interpreter
(the monkey-patching must not leak into the test process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent(
    """
    import runpy, socket
    runpy.run_path("gunicorn.conf.py")
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
