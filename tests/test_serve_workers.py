"""``rlmtf serve --workers 2``: the workers die with their supervisor, so a supervisor killed with SIGKILL
can be restarted on the same port at once (issue 16, problem 7)."""

from __future__ import annotations

import os
import signal
import time

import httpx
from test_serve_http import free_port, start_server, stop


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_sigkilled_supervisor_takes_its_workers_and_restarts_on_the_same_port(tmp_path):
    port = free_port()
    log_dir = tmp_path / "log"
    proc = start_server(log_dir, port, "--workers", "2")
    workers = []
    try:
        deadline = time.time() + 30
        while len(workers) < 2 and time.time() < deadline:  # multiprocessing's helper is a child too
            workers = [c for c in _children(proc.pid) if b"spawn_main" in _cmdline(c)]
            time.sleep(0.2)
        assert len(workers) >= 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.time() + 20
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "workers outlived their supervisor"
        again = start_server(log_dir, port, "--workers", "2")
        try:
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        finally:
            stop(again)
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
