"""Bodies that are not what they should be get a clear 4xx, never a traceback."""

import json

import pytest


@pytest.mark.parametrize(
    "data, content_type",
    [
        (b"not json", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b'{"token": "\xff"}', "application/json"),
        (b"", "application/json"),
        (b"[" * 5000, "application/json"),
        (b'{"token": NaN}', "application/json"),
    ],
)
def test_unparseable_bodies_are_400(client, data, content_type):
    response = client.post("/settings", data=data, content_type=content_type)
    assert response.status_code == 400
    assert response.json["status"] == "error"
    assert "JSON" in response.json["msg"]


@pytest.mark.parametrize("body", [[1, 2], "token", 5, None, True])
def test_non_object_bodies_are_400(client, body):
    response = client.post("/settings", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert response.json["msg"] == "body must be a JSON object"


def test_oversized_body_is_413(make_app, token_for):
    client = make_app(MAX_CONTENT_LENGTH=1000).test_client()
    body = {"token": token_for(), "prefs": {"prompt_data": {"system": "x" * 2000}}}
    response = client.post("/update-settings", json=body)
    assert response.status_code == 413
    assert response.json == {"status": "error", "msg": "request body too large"}


def test_default_limit_is_one_mebibyte(client, token_for):
    body = {"token": token_for(), "prefs": {"prompt_data": {"system": "x" * (1024 * 1024)}}}
    assert client.post("/update-settings", json=body).status_code == 413


def test_unknown_path_and_wrong_method_use_the_error_shape(client):
    missing = client.post("/nope", json={})
    assert missing.status_code == 404
    assert missing.json["status"] == "error"
    wrong = client.get("/settings")
    assert wrong.status_code == 405
    assert wrong.json["status"] == "error"
    assert "POST" in wrong.headers["Allow"]


def test_unexpected_errors_hide_internals(app, client, token_for, monkeypatch, caplog):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internals at /srv/chatsite/db.py")

    monkeypatch.setattr("chatsite.api.settings.user_prefs", explode)
    response = client.post("/settings", json={"token": token_for()})
    assert response.status_code == 500
    assert response.json == {"status": "error", "msg": "internal error"}
    assert "secret internals" in caplog.text  # logged server-side only


def test_text_plain_json_is_accepted(client, token_for):
    """Front ends may send text/plain to avoid a CORS preflight."""
    body = json.dumps({"token": token_for()})
    response = client.post("/settings", data=body, content_type="text/plain")
    assert response.status_code == 200
