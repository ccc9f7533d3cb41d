"""A small batch-job service on localhost, for the monitor notebook.

    jobs = JobApi(checks_until_done=4).start()
    jobs.url                    # http://127.0.0.1:PORT
    GET /jobs/nightly-etl  ->  {"job": "nightly-etl", "state": "running", "progress": 25}
    ... the 4th GET        ->  {"job": "nightly-etl", "state": "done", "progress": 100}

A job moves one step forward each time it is asked about, so a monitor needs the
same number of checks on every run. ``jobs.requests`` counts the requests served;
``jobs.restart(job)`` puts a job back at the start.
"""

from __future__ import annotations

import threading
from typing import Any

from local_server import LocalJsonServer


class JobApi(LocalJsonServer):
    def __init__(self, checks_until_done: int = 4) -> None:
        super().__init__()
        self.checks_until_done = checks_until_done
        self.requests = 0
        self._checks: dict[str, int] = {}
        self._lock = threading.Lock()

    def restart(self, job: str) -> None:
        with self._lock:
            self._checks.pop(job, None)

    def answer(self, path: str) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        if len(parts) != 2 or parts[0] != "jobs":
            return 404, {"message": "Not Found"}
        job = parts[1]
        with self._lock:
            self.requests += 1
            checks = self._checks[job] = self._checks.get(job, 0) + 1
        progress = min(100, 100 * checks // self.checks_until_done)
        state = "done" if checks >= self.checks_until_done else "running"
        return 200, {"job": job, "state": state, "progress": progress}
