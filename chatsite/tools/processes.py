"""Run tools in a few warm processes per worker, and kill one that outlives its time limit.

A thread cannot be stopped, and a pure-Python loop in one holds the GIL against every
greenlet of the worker; a process can be SIGKILLed, which frees its CPU at once. Each
worker keeps a small pool of tool processes (`TOOL_PROCESSES`); a call waits, at most its
time limit, for a free one. Waiting never blocks the worker: the pipes are non-blocking and
waited on through gevent's hub (or poll() without gevent).
"""

import contextlib
import logging
import os
import pickle
import queue
import select
import signal
import subprocess
import sys
import threading
import time

from gevent.socket import wait_read, wait_write

from ..greenlets import gevent_active
from .child import READY
from .wire import HEADER, MAX_REPLY_BYTES, ToolCall, ToolReply, frame

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # a fresh process imports the app's modules before its first call


class ToolTimeout(Exception):
    """The tool ran past its time limit; its process was killed."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"timed out after {seconds:g} s")
        self.seconds = seconds


class ToolsBusy(Exception):
    """Every tool process stayed busy for the whole time limit."""


class ToolProcessError(Exception):
    """The tool process died or answered nonsense (a crash, os._exit, the OOM killer)."""


class _Deadline(Exception):
    """Internal: a wait on a pipe ran out of time."""


class ToolProcess:
    """One child process and the two pipes to it; used by one call at a time."""

    def __init__(self) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(_import_path())}
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "chatsite.tools", str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except BaseException:
            for fd in (self._to_child, self._from_child):
                os.close(fd)
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        os.set_blocking(self._to_child, False)
        os.set_blocking(self._from_child, False)
        self.ready = False
        self.pid = self.popen.pid

    def call(self, call: ToolCall, seconds: float) -> ToolReply:
        """Run one call; raise ToolTimeout past `seconds` (the caller then kills us)."""
        if not self.ready:
            try:
                greeting = self._read(time.monotonic() + START_TIMEOUT)
            except _Deadline:
                greeting = b""
            if greeting != READY:
                raise ToolProcessError("the tool process did not start")
            self.ready = True
        deadline = time.monotonic() + seconds
        try:
            self._write(frame(pickle.dumps(call)), deadline)
            data = self._read(deadline)
        except _Deadline:
            raise ToolTimeout(seconds) from None
        try:
            return ToolReply.decode(data)
        except ValueError as exc:
            raise ToolProcessError(f"the tool process answered nonsense: {exc}") from None

    def kill(self) -> None:
        """SIGKILL the process (whatever it is doing), reap it, close the pipes."""
        with contextlib.suppress(OSError):
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            _wait(self._to_child, writable=True, deadline=deadline)
            try:
                view = view[os.write(self._to_child, view) :]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise ToolProcessError("the tool process exited") from None

    def _read(self, deadline: float) -> bytes:
        size = HEADER.unpack(self._read_exactly(HEADER.size, deadline))[0]
        if size > MAX_REPLY_BYTES:
            raise ToolProcessError(f"the tool process sent {size:,} bytes")
        return self._read_exactly(size, deadline)

    def _read_exactly(self, size: int, deadline: float) -> bytes:
        chunks, needed = [], size
        while needed:
            _wait(self._from_child, writable=False, deadline=deadline)
            try:
                chunk = os.read(self._from_child, needed)
            except BlockingIOError:
                continue
            if not chunk:
                raise ToolProcessError("the tool process exited")
            chunks.append(chunk)
            needed -= len(chunk)
        return b"".join(chunks)


class ToolProcessPool:
    """A fixed number of tool processes, started on first use, replaced when killed."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"TOOL_PROCESSES must be at least 1, not {size}")
        self.size = size
        self._idle: queue.Queue[ToolProcess] = queue.Queue()
        self._alive = 0  # processes started and not killed, idle or busy
        self._lock = threading.Lock()

    def run(self, call: ToolCall, seconds: float) -> ToolReply:
        """Run a call in a free process within `seconds`, else kill that process.

        ToolsBusy if no process frees up within `seconds`; ToolTimeout if the tool runs
        longer; ToolProcessError if the process dies. Anything raised into the waiting
        greenlet (a drain, a disconnect) also kills the process: nobody waits for it now.
        """
        self._start()
        try:
            process = self._idle.get(timeout=seconds)
        except queue.Empty:
            raise ToolsBusy(f"no tool process was free within {seconds:g} s") from None
        try:
            reply = process.call(call, seconds)
        except BaseException:
            self._discard(process)
            raise
        self._idle.put(process)
        return reply

    def pids(self) -> list[int]:
        """The idle processes' ids (for tests and diagnostics)."""
        return [process.pid for process in list(self._idle.queue)]

    def _start(self) -> None:
        """Top the pool up to its size: at first use, and after a replacement failed."""
        with self._lock:
            while self._alive < self.size:
                self._idle.put(ToolProcess())
                self._alive += 1
                log.info("started a tool process (%d of %d)", self._alive, self.size)

    def _discard(self, process: ToolProcess) -> None:
        """Kill a process nobody waits for any more and start its replacement now."""
        log.warning("killing tool process %d", process.pid)
        with self._lock:
            self._alive -= 1
        process.kill()
        try:
            self._start()
        except Exception:
            log.exception("could not start a tool process; retrying at the next call")


_pools: dict[int, ToolProcessPool] = {}
_pools_pid: int | None = None
_pools_lock = threading.Lock()


def shared_pool(size: int) -> ToolProcessPool:
    """This process's pool of `size` tool processes (apps and registries share it).

    A forked worker never uses its parent's processes: their pipes belong to the parent.
    """
    global _pools_pid
    with _pools_lock:
        if _pools_pid != os.getpid():
            _pools.clear()
            _pools_pid = os.getpid()
        if size not in _pools:
            _pools[size] = ToolProcessPool(size)
        return _pools[size]


def _wait(fd: int, writable: bool, deadline: float) -> None:
    """Wait until the pipe is ready, yielding to other greenlets; _Deadline at `deadline`."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _Deadline
    if gevent_active():
        waiter = wait_write if writable else wait_read
        waiter(fd, timeout=remaining, timeout_exc=_Deadline())
        return
    poller = select.poll()
    poller.register(fd, select.POLLOUT if writable else select.POLLIN)
    if not poller.poll(remaining * 1000):
        raise _Deadline


def _import_path() -> list[str]:
    """The worker's import path, so that the child imports the same tools."""
    return [os.path.abspath(entry) if entry else os.getcwd() for entry in sys.path]
