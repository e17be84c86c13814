"""Waiting for a child server (a spawned vLLM or Weaviate server) to answer: a slow start is reported while it runs."""

from __future__ import annotations

import sys

import pytest

from more_lightning import child_server
from more_lightning.child_server import launch, wait_until_ready
from more_lightning.experts.ports import free_port

pytestmark = pytest.mark.integration

SLOW_SERVER = """
import http.server, sys, time
print("loading the weights", flush=True)
time.sleep(1.5)
print("serving", flush=True)
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Ok).serve_forever()
"""


def test_a_slow_start_reports_its_time_and_the_log_s_last_line_until_the_server_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(child_server, "LINE_EVERY_S", 0.4)
    port = free_port()
    log_path = tmp_path / "server.log"
    process, log_file = launch([sys.executable, "-c", SLOW_SERVER, str(port)], {}, log_path)
    reports = []
    try:
        wait_until_ready(
            process, f"http://127.0.0.1:{port}/", 30, "the test server", log_path, RuntimeError, poll_s=0.1,
            still_starting=lambda elapsed, line: reports.append((elapsed, line)),
        )  # fmt: skip
    finally:
        process.kill()
        process.wait()
        log_file.close()
    assert len(reports) >= 2, reports
    assert [e for e, _ in reports] == sorted(e for e, _ in reports)
    assert reports[0][1] == "loading the weights"
    assert all(0.4 <= later - earlier for (earlier, _), (later, _) in zip(reports, reports[1:], strict=False))


def test_a_server_that_exits_while_starting_is_an_error_with_its_log(tmp_path):
    log_path = tmp_path / "server.log"
    process, log_file = launch([sys.executable, "-c", "print('no GPU found'); raise SystemExit(3)"], {}, log_path)
    try:
        with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*no GPU found"):
            wait_until_ready(process, f"http://127.0.0.1:{free_port()}/", 30, "the test server", log_path, RuntimeError)
    finally:
        log_file.close()
