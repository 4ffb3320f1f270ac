"""The chaos soak (issue 23): `python -m bench.soak [--topology single|cluster]`; see
__main__.py and README "Chaos soak".

- model.py: the fake model whose faults are switched at run time
- clients.py: the users (idempotent retries, resumes) and what they saw
- topology.py: what runs (one gunicorn, or two behind nginx) and the faults done to it
- verify.py: the invariants checked after the run, through the API and the database
"""

import sys

from bench import harness

if str(harness.REPO) not in sys.path:
    sys.path.insert(0, str(harness.REPO))  # tests/ holds the fake model and the TCP proxy
