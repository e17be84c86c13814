"""Waiting for a child server (a spawned vLLM or Weaviate server) to answer: a slow start is reported while it runs."""

from __future__ import annotations

import sys

import pytest

from more_lightning import child_server
from more_lightning.child_server import launch, wait_until_ready
from more_lightning.engines.vllm_server import last_info_message
from more_lightning.experts.ports import free_port

pytestmark = pytest.mark.integration

SLOW_SERVER = """
import http.server, sys, time
time.sleep(1.5)
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Ok).serve_forever()
"""


def test_a_slow_start_is_reported_at_each_interval_until_the_server_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(child_server, "LINE_EVERY_S", 0.4)
    port = free_port()
    log_path = tmp_path / "server.log"
    process, log_file = launch([sys.executable, "-c", SLOW_SERVER, str(port)], {}, log_path)
    reports = []
    try:
        wait_until_ready(
            process, f"http://127.0.0.1:{port}/", 30, "the test server", log_path, RuntimeError, poll_s=0.1,
            still_starting=reports.append,
        )  # fmt: skip
    finally:
        process.kill()
        process.wait()
        log_file.close()
    assert len(reports) >= 2, reports
    assert all(0.4 <= later - earlier for earlier, later in zip(reports, reports[1:], strict=False)), reports


def test_a_server_that_exits_while_starting_is_an_error_with_its_log(tmp_path):
    log_path = tmp_path / "server.log"
    process, log_file = launch([sys.executable, "-c", "print('no GPU found'); raise SystemExit(3)"], {}, log_path)
    try:
        with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*no GPU found"):
            wait_until_ready(process, f"http://127.0.0.1:{free_port()}/", 30, "the test server", log_path, RuntimeError)
    finally:
        log_file.close()


def test_a_starting_vllm_server_is_shown_by_its_last_info_message_never_its_warnings():
    log = (
        "/venv/site-packages/vllm/entrypoints/openai/api_server.py:24: DeprecationWarning: INFO is deprecated\n"
        "(Worker pid=7) INFO 12-05 10:21:54 [cpu_model_runner.py:68] Starting to load model smollm2...\n"
        "(Worker pid=7) INFO 12-05 10:21:55 [cpu_model_runner.py:87] Warming up model for the compilation...\n"
        "(Worker pid=7) WARNING 12-05 10:21:56 [decorators.py:333] [backbone] Compiling model again\n"
    )
    assert last_info_message(log) == "Warming up model for the compilation..."
    assert last_info_message(log.splitlines()[0]) == ""
