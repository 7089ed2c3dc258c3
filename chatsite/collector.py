"""The garbage collector tuned for a gevent worker holding many streams.

CPython's cyclic collector runs a young-generation pass every 700 net allocations and, now
and then, a full pass over every tracked object. A worker allocates thousands of objects per
request start, and a full pass walks the app's modules and every open stream: in py-spy
profiles of 200 simultaneous starts the collector took about a tenth of the worker's CPU
(bench/README.md). Objects that live as long as the process (the app, its modules, the
catalog) are moved out of the collector's sight once the worker is ready (`gc.freeze`),
and the young generation is collected less often, so that most of a request's short-lived
objects are freed by reference counting before any pass looks at them. Reference cycles
are still collected: later, in larger passes.
"""

import gc
import logging

log = logging.getLogger(__name__)

# Allocations between young-generation passes; passes of that generation between middle
# passes; middle passes between full ones (CPython's defaults: 700, 10, 10).
THRESHOLDS = (7000, 20, 20)


def tune_for_worker() -> None:
    """Freeze what exists now (call once the app is loaded) and space the passes out."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    log.debug("collector: %d objects frozen, thresholds %s", gc.get_freeze_count(), THRESHOLDS)
