"""GET /metrics: Prometheus metrics for the whole host (deploy/nginx.conf keeps it internal)."""

from flask import Blueprint, Response

from ..operations.metrics import CONTENT_TYPE
from ..operations.scrape import scrape
from ..site import current_site

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    return Response(scrape(current_site()), content_type=CONTENT_TYPE)
