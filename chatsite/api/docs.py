"""GET /docs: the interactive API page (Swagger UI), every asset served by the app.

The page's scripts and styles are the copy of Swagger UI that the `flask-swagger-ui`
package ships; the page itself is ours, so that it asks nothing of any other host: no
validator badge (`validatorUrl: null`), no web fonts, and a Content-Security-Policy that
would block such a request if a later Swagger UI tried one.
"""

import secrets
from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, abort, send_from_directory, url_for
from markupsafe import escape

bp = Blueprint("docs", __name__)

SWAGGER_UI = Path(flask_swagger_ui.__file__).parent / "dist"
ASSETS = frozenset(
    {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-16x16.png", "favicon-32x32.png"}
)

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>chatsite API</title>
  <link rel="stylesheet" href="{css}">
  <link rel="icon" type="image/png" href="{icon}" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{bundle}"></script>
  <script nonce="{nonce}">
    window.ui = SwaggerUIBundle({{
      url: "{spec}",
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
    }});
  </script>
</body>
</html>
"""


@bp.get("/docs")
def docs():
    nonce = secrets.token_urlsafe(16)
    page = PAGE.format(
        css=escape(url_for("docs.asset", asset="swagger-ui.css")),
        icon=escape(url_for("docs.asset", asset="favicon-32x32.png")),
        bundle=escape(url_for("docs.asset", asset="swagger-ui-bundle.js")),
        spec=escape(url_for("openapi.openapi")),
        nonce=nonce,
    )
    response = Response(page, mimetype="text/html")
    # Only this app: scripts (ours, by nonce, and Swagger UI's), styles (Swagger UI sets
    # some inline), images (its icons are data: URLs), and calls to the API itself.
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'self' 'nonce-{nonce}'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
        "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return response


@bp.get("/docs/<path:asset>")
def asset(asset: str):
    if asset not in ASSETS:
        abort(404)
    return send_from_directory(SWAGGER_UI, asset, max_age=86400)
