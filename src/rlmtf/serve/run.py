"""Run the ranking service under uvicorn (what ``rlmtf serve`` calls).

With several workers, uvicorn binds the shared listening socket itself as
``socket.socket(family)``, whose ``proto`` is 0; asyncio sets ``TCP_NODELAY`` only on accepted
sockets whose ``proto`` is ``IPPROTO_TCP``, so every worker's connections ran with Nagle's
algorithm. A response goes out as two writes (headers, then body): the body waited for the ACK of
the headers, which the client delays by up to 40 ms (delayed ACK). That was most of the first
measurement's 65.6 ms median at 100 requests/s. :func:`run_server` binds the socket with
``IPPROTO_TCP`` (and ``TCP_NODELAY`` on the listener) and hands it to uvicorn's own multi-process
supervisor; a single worker uses ``uvicorn.run`` unchanged (asyncio's own sockets have the right
``proto``).

Workers die with their supervisor: each worker asks the kernel for SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, Linux), so a supervisor killed with SIGKILL does not leave workers holding
the port; a worker whose parent is already gone when it starts exits at once. Idle keep-alive connections
are closed after ``keep_alive_s`` (uvicorn's ``timeout_keep_alive``); a stopping worker waits at most
``graceful_s`` for open connections.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys

from rlmtf.core.schema import FeatureSpec

__all__ = ["WORKER_ENV", "app_from_env", "die_with_parent", "listening_socket", "run_server"]

#: set (to the supervisor's pid) for the worker processes of ``run_server(workers > 1)``
WORKER_ENV = "RLMTF_SERVE_SUPERVISOR"
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when its parent dies (Linux; elsewhere nothing); exit now if ``parent`` is gone."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the supervisor died before the request above: nobody would stop us
        os._exit(0)


def app_from_env():
    """An app configured by ``RLMTF_SERVE_*`` environment variables (how ``rlmtf serve`` passes its options to
    every uvicorn worker process): POLICY, LOG_DIR, EXPLORE_FRACTION, LOWER_B, UPPER_B, MAX_CANDIDATES, SEED,
    BOUNDS (a per-user bounds file), TORCH_THREADS, DURABILITY, MODELS_DIR, MAX_BODY_BYTES, MAX_STRING_LENGTH,
    MAX_WATCH_TIME, BODY_TIMEOUT, FEATURE_SPEC (the feature spec as JSON, :meth:`FeatureSpec.to_json`; unset:
    the policy's own, else the simulator's)."""
    from rlmtf.serve.app import create_app

    env = os.environ
    if env.get(WORKER_ENV):
        die_with_parent(int(env[WORKER_ENV]))
    threads = env.get("RLMTF_SERVE_TORCH_THREADS", "")
    spec_json = env.get("RLMTF_SERVE_FEATURE_SPEC", "")
    return create_app(env.get("RLMTF_SERVE_POLICY", "baseline"), log_dir=env["RLMTF_SERVE_LOG_DIR"],
                      feature_spec=FeatureSpec.from_json(json.loads(spec_json)) if spec_json else None,
                      explore_fraction=float(env.get("RLMTF_SERVE_EXPLORE_FRACTION", "0")),
                      lower_b=float(env.get("RLMTF_SERVE_LOWER_B", "-0.15")),
                      upper_b=float(env.get("RLMTF_SERVE_UPPER_B", "0.15")),
                      max_candidates=int(env.get("RLMTF_SERVE_MAX_CANDIDATES", "2000")),
                      seed=int(env.get("RLMTF_SERVE_SEED", "0")), bounds=env.get("RLMTF_SERVE_BOUNDS") or None,
                      torch_threads=int(threads) if threads else None,
                      durability=env.get("RLMTF_SERVE_DURABILITY", "fsync"), freeze_gc=True,
                      models_dir=env.get("RLMTF_SERVE_MODELS_DIR") or None,
                      max_body_bytes=int(env.get("RLMTF_SERVE_MAX_BODY_BYTES", str(8 * 1024 * 1024))),
                      max_string_length=int(env.get("RLMTF_SERVE_MAX_STRING_LENGTH", "256")),
                      max_watch_time_s=float(env.get("RLMTF_SERVE_MAX_WATCH_TIME", "86400")),
                      body_timeout_s=float(env.get("RLMTF_SERVE_BODY_TIMEOUT", "30")))


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket (``IPPROTO_TCP``, ``SO_REUSEADDR``, ``TCP_NODELAY``) that worker processes inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def run_server(app: str, *, host: str, port: int, workers: int = 1, log_level: str = "warning",
               factory: bool = True, keep_alive_s: float = 5.0, graceful_s: float = 5.0,
               max_connections: int | None = None) -> None:
    """``uvicorn.run(app, ...)``, with a correctly made listening socket when ``workers > 1``."""
    import uvicorn

    opts = {"factory": factory, "host": host, "port": port, "log_level": log_level, "timeout_keep_alive": keep_alive_s,
            "timeout_graceful_shutdown": graceful_s, "limit_concurrency": max_connections}
    if workers <= 1:
        uvicorn.run(app, **opts)
        return
    from uvicorn.supervisors import Multiprocess

    os.environ[WORKER_ENV] = str(os.getpid())  # the spawned workers inherit it: they die with this process
    config = uvicorn.Config(app, workers=workers, **opts)
    sock = listening_socket(host, port)
    try:
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:  # Ctrl-C is the normal way to stop the server: exit without a traceback
        pass
    finally:
        sock.close()
