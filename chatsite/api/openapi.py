"""GET /openapi.json: the OpenAPI 3 description of every route."""

from flask import Blueprint, current_app, jsonify

from .description import description

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi():
    return jsonify(description(current_app))
