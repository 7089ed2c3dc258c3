"""After an answer's last line: give the body a moment to end, so its connection is reused.

Both transports (urllib3's and geventhttpclient's, `client.py` and `gevent_stream.py`) read
the rest the same way; only how they reach the socket and the body's pieces differs.
"""

import socket
import time
from collections.abc import Iterable


def body_ends_within(
    sock: socket.socket | None, rest: Iterable[bytes], grace: float, limit: int
) -> bool:
    """Read `rest` (normally just the body's end) for at most `grace` seconds and `limit`
    bytes; True if it ended in time (the connection can then be kept)."""
    deadline, extra = time.monotonic() + grace, 0
    try:
        if sock is not None:
            sock.settimeout(grace)  # the connection's next request sets its own
        for chunk in rest:
            extra += len(chunk)
            if extra > limit or time.monotonic() > deadline:
                return False
    except Exception:  # timed out or broken: this connection cannot be reused
        return False
    return True
