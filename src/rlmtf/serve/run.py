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
"""

from __future__ import annotations

import socket

__all__ = ["listening_socket", "run_server"]


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
               factory: bool = True) -> None:
    """``uvicorn.run(app, ...)``, with a correctly made listening socket when ``workers > 1``."""
    import uvicorn

    if workers <= 1:
        uvicorn.run(app, factory=factory, host=host, port=port, log_level=log_level)
        return
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(app, factory=factory, host=host, port=port, workers=workers, log_level=log_level)
    sock = listening_socket(host, port)
    try:
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:  # Ctrl-C is the normal way to stop the server: exit without a traceback
        pass
    finally:
        sock.close()
