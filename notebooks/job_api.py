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

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JobApi:
    def __init__(self, checks_until_done: int = 4) -> None:
        self.checks_until_done = checks_until_done
        self.requests = 0
        self._checks: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the service first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> JobApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = api._answer(self.path)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the notebook's output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def restart(self, job: str) -> None:
        with self._lock:
            self._checks.pop(job, None)

    def _answer(self, path: str) -> tuple[int, Any]:
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
