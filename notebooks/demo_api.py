"""A small GitHub-like JSON API on localhost, for the example notebooks.

    api = DemoApi(repos=64).start()
    api.url                      # http://127.0.0.1:PORT
    GET /orgs/octo-org/repos     -> [{"name": "repo-00", "full_name": "octo-org/repo-00"}, ...]
    GET /repos/octo-org/repo-07  -> {"full_name": "octo-org/repo-07", "open_issues": 12}

Every response waits ``latency`` seconds, like a real API. A few repositories answer
their first request with ``503 Service Unavailable`` (deterministically: every
``flaky_every``-th one), so retries have something to do. ``api.requests`` counts the
requests served, which shows what a cached rerun did not have to ask for.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from local_server import LocalJsonServer


class DemoApi(LocalJsonServer):
    def __init__(
        self,
        org: str = "octo-org",
        repos: int = 64,
        latency: float = 0.02,
        flaky_every: int = 13,
        seed: int = 7,
    ) -> None:
        super().__init__()
        self.org = org
        self.latency = latency
        self.names = [f"repo-{i:02d}" for i in range(repos)]
        rng = random.Random(seed)
        self.issues = {name: rng.randint(0, 40) for name in self.names}
        self.flaky = {name for i, name in enumerate(self.names) if i % flaky_every == 3}
        self.requests = 0
        self.failures_served = 0
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def answer(self, path: str) -> tuple[int, Any]:
        time.sleep(self.latency)
        with self._lock:
            self.requests += 1
            first_time = path not in self._seen
            self._seen.add(path)
        parts = [p for p in path.split("/") if p]
        if parts == ["orgs", self.org, "repos"]:
            return 200, [{"name": n, "full_name": f"{self.org}/{n}"} for n in self.names]
        if len(parts) == 3 and parts[0] == "repos" and parts[1] == self.org:
            name = parts[2]
            if name not in self.issues:
                return 404, {"message": "Not Found"}
            if name in self.flaky and first_time:
                with self._lock:
                    self.failures_served += 1
                return 503, {"message": "Service Unavailable, try again"}
            return 200, {"full_name": f"{self.org}/{name}", "open_issues": self.issues[name]}
        return 404, {"message": "Not Found"}
