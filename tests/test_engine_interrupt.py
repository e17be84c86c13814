"""Ctrl-C while a rollout's requests are in flight ends the wait at once: the requests not sent are dropped, those in
flight are abandoned (never retried, nobody waits for them), and the engine serves the next request.

The server here stands in for a vLLM server that is slow to generate (as on a CPU): it answers ``/v1/models`` and
holds every completion request until the test releases it, then hangs up without an answer. What no user runs is only
the slowness; the client, its threads and its sockets are the real ones.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from more_lightning.engines.config import EngineConfig
from more_lightning.engines.vllm_engine import VLLMEngine

pytestmark = pytest.mark.integration

HOLD_S = 60.0


class SlowServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, interrupt_at: int) -> None:
        super().__init__(("127.0.0.1", 0), SlowGeneration)
        self.interrupt_at = interrupt_at
        self.received: list[int] = []
        """The request numbers received (a retry would come twice)."""
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.main_thread = threading.main_thread().ident


class SlowGeneration(BaseHTTPRequestHandler):
    server: SlowServer

    def log_message(self, *args) -> None:
        pass

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # /v1/models
        self._json({"data": [{"id": "base"}]})

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path == "/v1/fast":
            self._json({"choices": []})
            return
        with self.server.lock:
            self.server.received.append(payload["prompt"][0])
            if len(self.server.received) == self.server.interrupt_at:  # Ctrl-C, as the terminal sends it
                signal.pthread_kill(self.server.main_thread, signal.SIGINT)
        self.server.release.wait(HOLD_S)
        self.close_connection = True  # no answer: the client sees the connection dropped


@pytest.fixture
def slow_server():
    server = SlowServer(interrupt_at=3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def test_ctrl_c_abandons_the_requests_in_flight_and_the_engine_serves_the_next_one(slow_server):
    if threading.current_thread() is not threading.main_thread():
        pytest.fail("this test sends SIGINT to the main thread: run it there")
    url = f"http://127.0.0.1:{slow_server.server_address[1]}"
    engine = VLLMEngine(EngineConfig(kind="vllm", mode="external", url=url, retries=2, request_timeout_s=HOLD_S * 2))
    requests = [("/v1/completions", {"prompt": [number]}) for number in range(100)]
    assert not _request_threads()
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        engine.post_all(requests)
    assert time.monotonic() - began < HOLD_S, "the wait ended before the held requests did"
    assert engine.post("/v1/fast", {}) == {"choices": []}, "the engine serves the next request"
    slow_server.release.set()  # the held requests now fail: abandoned, they are not retried
    for _ in range(100):
        if not _request_threads():
            break
        time.sleep(0.1)
    assert not _request_threads(), "the abandoned requests' threads ended"
    received = slow_server.received
    assert len(received) == len(set(received)), "no abandoned request was retried"
    assert 3 <= len(received) <= 64, "only requests already in flight were sent"
    engine.close()


def _request_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "vllm-request" and t.is_alive()]
