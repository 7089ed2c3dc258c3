"""The streamed POST under gevent: geventhttpclient's pool and C parser instead of urllib3.

Why: relaying 1,000 slow streams, urllib3's chunked decoding (a buffered `readline` for
each chunk's size, a read for its data, another for its end, each through http.client's
socket file) took 13 % of a gevent worker, and its request path (the pool's checks,
http.client's status line and headers parsed through the email package) 13.5 % of a
stream's start. geventhttpclient is made for gevent: its llhttp parser decodes a whole
read in C and calls back once per chunk of the body.

Only plain `http://` instances go this way (a GPU box on the operator's network); an
`https://` one keeps urllib3, with the TLS settings requests gives it. The Flask dev
server's threads keep urllib3 too: this pool is for one gevent hub.
"""

import contextlib
import socket
from collections.abc import Iterator

from geventhttpclient.connectionpool import ConnectionPool
from geventhttpclient.response import HTTPParseError, HTTPSocketPoolResponse

from .errors import TOO_SLOW, UNREACHABLE, InstanceError
from .settle import body_ends_within

READ_SIZE = 65536  # one read takes whatever the instance has sent, many lines if it is ahead

# What a failed read of the body raises: the stream names it "connection failed".
BODY_ERRORS = (OSError, HTTPParseError)


class BodyEndedEarly(ConnectionError):
    """The connection ended before the body did."""


class GeventStreamResponse(HTTPSocketPoolResponse):
    """A streamed answer's response: its body comes out read by read, as it is parsed.

    The parser hands each chunk of the body to `_on_body`; `chunks()` yields what one read
    completed. Once the body is complete the parser gives the connection back to the pool
    (kept alive if the instance allows it), so an answer read to its end costs no extra step.
    """

    def __init__(self, sock: socket.socket, pool: ConnectionPool) -> None:
        self._pieces: list[bytes] = []  # the body parsed so far, not yet handed out
        super().__init__(sock, pool, block_size=READ_SIZE, method="POST")  # reads the head

    def _on_body(self, buf: bytearray) -> None:
        self._pieces.append(bytes(buf))

    def socket(self) -> socket.socket | None:
        """The connection, for a read watchdog that may shut it down."""
        return self._sock

    def chunks(self) -> Iterator[bytes]:
        """Yield the body as it comes, one piece per read; a connection that ends first
        raises `BodyEndedEarly`."""
        pieces = self._pieces
        while True:
            if pieces:
                chunk = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                pieces.clear()
                yield chunk
            if self.message_complete:
                return
            sock = self._sock
            if sock is None:
                raise BodyEndedEarly("the connection was closed")
            data = sock.recv(READ_SIZE)
            self.feed(data)  # an empty read tells the parser the connection ended
            if not data and not self.message_complete:
                raise BodyEndedEarly("the connection ended before the body")

    def read_body(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body (an error's text, a short answer)."""
        text = b""
        for chunk in self.chunks():
            text += chunk
            if len(text) >= limit:
                break
        return text[:limit]

    def settle(self, grace: float, limit: int) -> bool:
        """Read what follows the answer's last line (normally just the body's end) for at
        most `grace` seconds and `limit` bytes; True if the connection went back to the pool."""
        if self.message_complete:
            return True
        sock = self._sock
        if sock is None:
            return False
        return body_ends_within(sock, self.chunks(), grace, limit)

    def close(self) -> None:
        """Drop the connection (the instance stops generating); wakes a greenlet reading it."""
        sock = self._sock
        if sock is None:
            return  # complete, and given back already
        with contextlib.suppress(OSError):
            sock.close()
        self.release()  # an unfinished body: the pool forgets the connection


class GeventStreamPool:
    """Keep-alive connections to one `http://` instance, and its streamed POSTs.

    `host` and `port` are where to connect, `authority` the `Host` header (the URL's).
    The request head is the same for every call but for the path and the body's length,
    so it is written once; geventhttpclient's `ConnectionPool` connects (connect time-out),
    drops connections the instance closed while idle, and keeps the rest.
    """

    def __init__(
        self,
        host: str,
        port: int,
        authority: str,
        headers: dict[str, str],
        connect_timeout: float,
        read_timeout: float,
        size: int,
    ) -> None:
        self.read_timeout = read_timeout
        self.pool = ConnectionPool(
            host,
            port,
            host,
            port,
            size=size,
            connection_timeout=connect_timeout,
            network_timeout=read_timeout,
        )
        fields = {"Host": authority, **headers, "Connection": "keep-alive"}
        self._fields = "".join(f"{name}: {value}\r\n" for name, value in fields.items())

    def post(self, path: str, body: bytes) -> GeventStreamResponse:
        """POST `body` to `path`; the response once its head is in. Errors are named as
        requests names them (`ConnectTimeout`, `ReadTimeout`, `ConnectionError`)."""
        head = f"POST {path} HTTP/1.1\r\n{self._fields}Content-Length: {len(body)}\r\n\r\n"
        try:
            sock = self.pool.get_socket()
        except TimeoutError:
            raise InstanceError(TOO_SLOW, retryable=True, detail="ConnectTimeout") from None
        except OSError:
            raise InstanceError(UNREACHABLE, retryable=True, detail="ConnectionError") from None
        try:
            sock.settimeout(self.read_timeout)  # a reused connection had the stream's None
            sock.sendall(head.encode("latin-1") + body)
        except OSError as error:
            self.pool.release_socket(sock)
            raise InstanceError(UNREACHABLE, retryable=True, detail=type(error).__name__) from None
        try:
            return GeventStreamResponse(sock, self.pool)  # gives the socket back if it fails
        except TimeoutError:
            raise InstanceError(TOO_SLOW, retryable=True, detail="ReadTimeout") from None
        except BODY_ERRORS as error:
            raise InstanceError(UNREACHABLE, retryable=True, detail=type(error).__name__) from None
