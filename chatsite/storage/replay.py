"""The replayer: writes the journal's saves to the database in the background, with backoff.

Each worker runs one (a thread, so a greenlet under gevent), started when the worker starts
(gunicorn.conf.py), which replays what a dead worker left, and whenever a save is
journaled. A pass replays every entry, oldest first within each chat, under the host's
replay lock; the first failure of the database ends the pass (a chat's later saves never
overtake an earlier one), and the next pass comes after a growing pause, or at once when a
new entry is journaled.
"""

import logging
import threading
from collections.abc import Callable

from .chats import ChatNotFound
from .journal import Entry, Journal
from .transcripts import TranscriptMissing

log = logging.getLogger(__name__)

BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)  # then 15 s each time
IDLE_CHECK_SECONDS = 60.0  # with nothing left, look again now and then (another worker's)
# An entry that can never be written is set aside (kept, not replayed), never dropped.
UNREPLAYABLE = (ValueError, KeyError, TypeError, ChatNotFound, TranscriptMissing)


class Replayer:
    """Replay the journal in one background thread per process, with backoff."""

    def __init__(self, journal: Journal, replay: Callable[[Entry], None]) -> None:
        self.journal = journal
        self.replay = replay
        self._wake = threading.Event()
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the background thread (once per process)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self.journal.clean_stray_temp_files()
        threading.Thread(target=self._run, name="journal-replayer", daemon=True).start()

    def wake(self) -> None:
        """Try again now: a new entry was journaled."""
        self._wake.set()

    def replay_pass(self) -> bool:
        """Replay every entry while the database takes them; True when none is left."""
        with self.journal.replay_lock() as held:
            if not held:
                return False  # another worker is replaying: look again later
            for path in self.journal.pending():
                try:
                    entry = self.journal.read(path)
                except FileNotFoundError:
                    continue
                except UNREPLAYABLE as error:
                    log.error("journal entry %s is not valid (%s): set aside", path.name, error)
                    self.journal.hold(path)
                    continue
                try:
                    self.replay(entry)
                except UNREPLAYABLE as error:
                    log.error(
                        "journaled save %s cannot be written (%r): set aside", path.name, error
                    )
                    self.journal.hold(path)
                    continue
                except Exception as error:
                    log.warning("journaled saves wait: %s: %s", type(error).__name__, error)
                    return False
                self.journal.remove(path)
                log.info("journaled save of chat %s written", entry.chat_id)
        return not self.journal.pending()

    def _run(self) -> None:
        failures = 0
        while True:
            try:
                done = self.replay_pass()
            except Exception:
                log.exception("replaying the journal failed")
                done = False
            if done:
                failures = 0
                pause = IDLE_CHECK_SECONDS
            else:
                pause = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                failures += 1
            self._wake.wait(pause)
            self._wake.clear()
