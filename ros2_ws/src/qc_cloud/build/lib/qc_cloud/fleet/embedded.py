"""The fleet service inside another program (`make demo`, system tests, the benchmark): ingest + SQLite (or a
given database) + the HTTP API on a free loopback port, served by uvicorn in a thread; queried over real HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from qc_cloud.fleet import settings as settings_module
from qc_cloud.fleet.service import FleetService, read_tokens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedFleet:
    def __init__(self, data_dir: Path, broker_url: str, **overrides: Any) -> None:
        import uvicorn

        port = overrides.pop("api_port", None) or _free_port()
        self.settings = settings_module.load(
            None, env={}, data_dir=str(data_dir), broker_url=broker_url, api_port=port, **overrides
        )
        self.service = FleetService(self.settings).start()
        self.url = f"http://127.0.0.1:{port}"
        self.tokens = read_tokens(self.settings.data_dir)
        config = uvicorn.Config(self.service.app(), host="127.0.0.1", port=port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fleet-api", daemon=True)
        self._thread.start()
        end = time.monotonic() + 20
        while not self._server.started and time.monotonic() < end:
            time.sleep(0.05)
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"the fleet API did not start on {self.url}")

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        request = urllib.request.Request(
            f"{self.url}{path}{'?' + query if query else ''}",
            headers={"Authorization": f"Bearer {self.tokens['read']}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def part_ids(self, cell: str | None = None) -> set[str]:
        """Distinct part ids stored, read page by page through the API."""
        ids: set[str] = set()
        offset: int | None = 0
        while offset is not None:
            page = self.get("/api/v1/parts", cell=cell, limit=1000, offset=offset)
            ids |= {p["part_id"] for p in page["items"]}
            offset = page["next_offset"]
        return ids

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self.service.stop()
