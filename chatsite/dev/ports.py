"""Free local ports, for the development servers, the tests and the benchmark."""

import socket


def free_port() -> int:
    """Ask the kernel for a free port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
