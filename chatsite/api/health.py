"""GET /healthz: can this worker serve? For load balancers and operators."""

import logging

from flask import Blueprint

from ..site import current_site
from ..storage.database import db

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


def database_ok() -> bool:
    """Run a trivial query on the request's connection."""
    try:
        db.connect(reuse_if_open=True)
        db.execute_sql("SELECT 1").fetchone()
        return True
    except Exception as error:  # any failure means "not healthy"
        log.warning("health check: database unreachable: %s", type(error).__name__)
        return False


@bp.get("/healthz")
def healthz():
    site = current_site()
    site.catalog.ready()
    instances = [
        {
            "index": index,
            "reachable": instance.reachable,
            "models": len(instance.models),
            "slots_in_use": site.coordinator.slots_in_use(instance.url),
            "max_concurrent": instance.max_concurrent,
        }
        for index, instance in enumerate(site.catalog.instances)
    ]
    database = database_ok()
    healthy = database and any(i["reachable"] for i in instances)
    body = {"status": "ok" if healthy else "error", "database": database, "instances": instances}
    return body, 200 if healthy else 503
