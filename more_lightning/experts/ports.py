"""Free TCP ports on the loopback interface, for servers the project starts itself."""

from __future__ import annotations

import socket


def port_is_free(port: int) -> bool:
    """Whether nothing listens on ``port`` (checked on all interfaces, as Weaviate's gRPC port binds them all)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def free_port(exclude: set[int] = frozenset()) -> int:
    """A port the kernel says is free now, not in ``exclude``."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        if port not in exclude:
            return port


def free_port_pair(exclude: set[int] = frozenset()) -> int:
    """A port ``p`` such that ``p`` and ``p + 1`` are both free (Weaviate uses gossip/data and raft/rpc pairs)."""
    while True:
        port = free_port(exclude)
        if port + 1 not in exclude and port < 65535 and port_is_free(port + 1):
            return port
