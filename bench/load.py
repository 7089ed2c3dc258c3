"""Load client: C concurrent HTTP/1.1 POSTs over raw asyncio sockets (stdlib only).

The driver (``bench/run.py``) starts one or more of these processes. Protocol on the pipes:

1. the driver writes one JSON line, the *spec*, to stdin;
2. the client opens its connections (when ``preconnect``), then writes ``ready`` to stdout;
3. the driver writes ``go`` to stdin (all clients start at the same moment);
4. the client runs the load and writes one JSON line, the *results*, to stdout and exits.

Spec fields:

``url``          ``http://127.0.0.1:PORT/path`` (plain HTTP only)
``bodies``       list of JSON values; request ``j`` of connection ``i`` sends
                 ``bodies[(i + j * concurrency) % len(bodies)]`` (one body per connection when
                 there are ``concurrency`` bodies; every body in turn when there are more)
``concurrency``  number of connections, each doing requests one after the other (keep-alive)
``requests``     total number of requests over all connections (default: ``concurrency``)
``duration``     if set, keep issuing requests until this many seconds after ``go`` instead
``timeout``      seconds one request may take (default 60)
``preconnect``   open the connections before ``ready`` (default true)
``read_batch_ms`` if set, the event loop sleeps this long between polls, so that each read
                 takes many lines at once: the client then needs far less CPU per line (on a
                 small machine it competes with the server it measures), at the price of
                 timestamps that are up to this late (use it for throughput, not latency)

Results: ``{"records": [[t_start, t_first, t_end, lines, status, done, bytes], ...],
"errors": n, "error_samples": [...], "cpu": seconds, "t_go": t}``. Times are
``time.monotonic()`` values, which are comparable between processes on Linux.
``t_first`` is when the first complete NDJSON line (the first ``\\n`` of the decoded body)
arrived (``null`` if none); ``lines`` counts body lines; ``done`` is true when the last line is
a JSON object with ``"done": true`` and no ``"status": "error"`` (for a response that is
not ``application/x-ndjson``: when the status is 200). ``status`` is the HTTP code,
or 0 when the request failed without an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import sys
import time
from typing import Any
from urllib.parse import urlsplit

MAX_TAIL = 1 << 20  # longest partial line kept, to read the last line
MAX_SAMPLE = 300
MAX_SAMPLES = 5
BATCH_RCVBUF = 4 << 20  # receive buffer with read_batch_ms (capped by net.core.rmem_max)

HEAD, SIZE, DATA, CRLF, TRAILER, CLOSE = range(6)


class ResponseError(Exception):
    """The connection broke or the server sent something that is not HTTP."""


class Connection(asyncio.Protocol):
    """One keep-alive connection reading one response at a time.

    The parser is a small state machine over the raw bytes (head, then chunked, sized or
    close-delimited body). It counts NDJSON lines without building them: only the last
    complete line is kept, to check the final ``done`` object.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future | None = None
        self._reset()

    def _reset(self) -> None:
        self.state = HEAD
        self.buf = b""
        self.status = 0
        self.keep_alive = True
        self.remaining = 0
        self.chunked = False
        self.ndjson = False
        self.lines = 0
        self.nbytes = 0
        self.t_first: float | None = None
        self.tail = b""
        self.last_line = b""
        self.sample = b""

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.state == CLOSE:
                self._finish()
            else:
                self.waiter.set_exception(ResponseError(f"connection lost ({exc or 'EOF'})"))

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            return  # nothing asked: ignore stray bytes
        try:
            self._feed(self.buf + data if self.buf else data)
        except (ValueError, IndexError) as error:
            self.waiter.set_exception(ResponseError(f"bad response: {error}"))
            self.transport.close()

    # parsing

    def _feed(self, buf: bytes) -> None:
        pos, end = 0, len(buf)
        while pos < end:
            state = self.state
            if state == DATA:
                take = min(self.remaining, end - pos)
                self._body(buf, pos, pos + take)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    if self.chunked:
                        self.state = CRLF
                    else:
                        self._finish()
                        return
            elif state == SIZE:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    break
                size = int(buf[pos:i].split(b";", 1)[0], 16)
                pos = i + 2
                if size:
                    self.remaining, self.state = size, DATA
                else:
                    self.state = TRAILER
            elif state == CRLF:
                if end - pos < 2:
                    break
                pos += 2
                self.state = SIZE
            elif state == CLOSE:
                self._body(buf, pos, end)
                pos = end
            elif state == TRAILER:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    break
                if i == pos:
                    self._finish()
                    return
                pos = i + 2
            else:  # HEAD
                i = buf.find(b"\r\n\r\n", pos)
                if i < 0:
                    break
                self._head(buf[pos:i])
                pos = i + 4
                if self.state == HEAD:  # a 1xx answer: the real head follows
                    continue
                if self.state == DATA and self.remaining == 0:
                    self._finish()
                    return
        self.buf = buf[pos:]

    def _head(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        version, code = lines[0].split(" ", 2)[:2]
        self.status = int(code)
        if 100 <= self.status < 200:
            return
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip().lower()
        connection = headers.get("connection", "")
        self.keep_alive = "close" not in connection and (
            version == "HTTP/1.1" or "keep-alive" in connection
        )
        self.ndjson = "ndjson" in headers.get("content-type", "")
        if "chunked" in headers.get("transfer-encoding", ""):
            self.chunked, self.state = True, SIZE
        elif "content-length" in headers:
            self.remaining, self.state = int(headers["content-length"]), DATA
        else:
            self.keep_alive, self.state = False, CLOSE

    def _body(self, buf: bytes, start: int, stop: int) -> None:
        if start >= stop:
            return
        self.nbytes += stop - start
        if self.status != 200 and len(self.sample) < MAX_SAMPLE:
            self.sample += buf[start : min(stop, start + MAX_SAMPLE)]
        count = buf.count(b"\n", start, stop)
        if not count:
            if len(self.tail) < MAX_TAIL:
                self.tail += buf[start:stop]
            return
        if self.t_first is None:
            self.t_first = time.monotonic()
        self.lines += count
        last = buf.rfind(b"\n", start, stop)
        before = buf.rfind(b"\n", start, last)
        self.last_line = buf[before + 1 : last] if before >= 0 else self.tail + buf[start:last]
        self.tail = buf[last + 1 : stop]

    def _finish(self) -> None:
        self.state = HEAD
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(time.monotonic())

    # use

    async def request(self, payload: bytes, timeout: float) -> tuple[float, float, int]:
        """Send one request; return (t_start, t_end, status) once the response is complete."""
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        t_start = time.monotonic()
        self.transport.write(payload)
        t_end = await asyncio.wait_for(self.waiter, timeout)
        if not self.keep_alive:
            self.transport.close()
        return t_start, t_end, self.status

    def done_flag(self) -> bool:
        """True when the last line is a ``done: true`` object that is not an error."""
        if not self.ndjson:
            return self.status == 200
        line = self.last_line or self.tail
        try:
            obj = json.loads(line)
        except ValueError:
            return False
        return isinstance(obj, dict) and obj.get("done") is True and obj.get("status") != "error"


class Load:
    """Runs one spec."""

    def __init__(self, spec: dict[str, Any]) -> None:
        url = urlsplit(spec["url"])
        if url.scheme != "http" or not url.hostname:
            raise ValueError("url must be http://host:port/path")
        self.host, self.port = url.hostname, url.port or 80
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        self.concurrency = int(spec["concurrency"])
        self.left = int(spec.get("requests") or self.concurrency)
        self.duration = spec.get("duration")
        self.timeout = float(spec.get("timeout", 60))
        self.preconnect = bool(spec.get("preconnect", True))
        self.read_batch = float(spec.get("read_batch_ms") or 0) / 1000
        host_header = f"{self.host}:{self.port}"
        self.payloads = []
        for body in spec["bodies"]:
            raw = json.dumps(body, separators=(",", ":")).encode()
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n"
                f"Content-Type: application/json\r\nAccept: application/x-ndjson\r\n"
                f"Content-Length: {len(raw)}\r\n\r\n"
            ).encode()
            self.payloads.append(head + raw)
        self.records: list[list[Any]] = []
        self.errors = 0
        self.samples: list[str] = []
        self.deadline = float("inf")
        self.t_go = time.monotonic()

    def _error(self, text: str) -> None:
        self.errors += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(text[:MAX_SAMPLE])

    async def connect(self) -> Connection | None:
        loop = asyncio.get_running_loop()
        try:
            transport, conn = await asyncio.wait_for(
                loop.create_connection(Connection, self.host, self.port), self.timeout
            )
        except (OSError, TimeoutError) as error:
            self._error(f"connect: {error!r}")
            return None
        if self.read_batch:
            # Room for what arrives while the loop sleeps, so that the sender never waits.
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BATCH_RCVBUF)
        return conn

    async def worker(self, index: int, conn: Connection | None) -> None:
        """Issue requests one after the other on one connection (reconnecting if closed)."""
        payloads, step = self.payloads, self.concurrency
        while self.left > 0 and time.monotonic() < self.deadline:
            self.left -= 1
            payload = payloads[index % len(payloads)]
            index += step
            if conn is None or conn.closed or conn.transport.is_closing():
                conn = await self.connect()
                if conn is None:
                    self.records.append([time.monotonic(), None, time.monotonic(), 0, 0, False, 0])
                    await asyncio.sleep(0.05)
                    continue
            t_start = time.monotonic()
            try:
                t_start, t_end, status = await conn.request(payload, self.timeout)
            except (ResponseError, TimeoutError, OSError) as error:
                self._error(
                    f"request {time.monotonic() - self.t_go:.2f} s after go, "
                    f"{conn.lines} lines in: {error!r}"
                )
                conn.transport.close()
                self.records.append(
                    [
                        t_start,
                        conn.t_first,
                        time.monotonic(),
                        conn.lines,
                        conn.status,
                        False,
                        conn.nbytes,
                    ]
                )
                continue
            done = conn.done_flag() if status == 200 else False
            if status != 200:
                self._error(f"HTTP {status}: {conn.sample.decode('utf-8', 'replace')}")
            elif not done:
                self._error(f"stream did not end with done: {conn.last_line[:200]!r}")
            self.records.append(
                [t_start, conn.t_first, t_end, conn.lines, status, done, conn.nbytes]
            )
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    async def batch_reads(self) -> None:
        """Make each event-loop iteration last ``read_batch``, so that data piles up.

        The loop sleeps only for what is left of the period after its work, so a client
        that is busy anyway never sleeps.
        """
        woke = time.monotonic()
        while True:
            pause = self.read_batch - (time.monotonic() - woke)
            if pause > 0:
                time.sleep(pause)  # blocks the loop on purpose
            woke = time.monotonic()
            await asyncio.sleep(0)

    async def run(self, go: Any) -> dict[str, Any]:
        """Connect, wait for the go signal, then run all workers."""
        conns: list[Connection | None] = [None] * self.concurrency
        if self.preconnect:
            conns = list(await asyncio.gather(*(self.connect() for _ in range(self.concurrency))))
        await go()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        t_go = self.t_go = time.monotonic()
        if self.duration:
            self.deadline = t_go + float(self.duration)
            self.left = 1 << 62
        batcher = asyncio.create_task(self.batch_reads()) if self.read_batch else None
        await asyncio.gather(*(self.worker(i, conns[i]) for i in range(self.concurrency)))
        if batcher is not None:
            batcher.cancel()
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
        return {
            "records": self.records,
            "errors": self.errors,
            "error_samples": self.samples,
            "cpu": cpu,
            "t_go": t_go,
        }


def raise_nofile_limit() -> None:
    """Allow as many sockets as the hard limit permits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _main() -> None:
    spec = json.loads(sys.stdin.readline())
    load = Load(spec)
    loop = asyncio.get_running_loop()

    async def go() -> None:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            raise SystemExit("load: expected 'go' on stdin")

    results = await load.run(go)
    sys.stdout.write(json.dumps(results, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main() -> None:
    raise_nofile_limit()
    asyncio.run(_main())


if __name__ == "__main__":
    main()
