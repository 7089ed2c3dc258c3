"""Bodies that are not what they should be get a clear 4xx, never a traceback."""

import json
import uuid

import pytest
import requests


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


def padded_body(token: str, size: int) -> bytes:
    """A valid JSON body of exactly `size` bytes (trailing spaces are JSON whitespace)."""
    body = json.dumps({"token": token}).encode()
    return body + b" " * (size - len(body))


def chunked(data: bytes, piece: int = 65536):
    """Send `data` with Transfer-Encoding: chunked (requests does so for a generator)."""
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


def test_chunked_bodies_past_the_limit_are_413(live, token_for):
    """Under the dev server: no Content-Length, yet the same limit and the same 413."""
    token, limit = token_for(), 1024 * 1024
    for size in (limit - 1, limit):
        response = requests.post(f"{live.url}/settings", data=chunked(padded_body(token, size)))
        assert response.status_code == 200, size
    for size in (limit + 1, 3 * limit):
        response = requests.post(f"{live.url}/settings", data=chunked(padded_body(token, size)))
        assert response.status_code == 413, size
        assert response.json() == {"status": "error", "msg": "request body too large"}


def test_every_response_says_nosniff(live, token_for, monkeypatch):
    url, token = live.url, token_for()
    chat = {"token": token, "model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    responses = [
        requests.post(f"{url}/settings", json={"token": token}),  # 200 JSON
        requests.post(f"{url}/chat", json=chat),  # 200 NDJSON stream
        requests.post(f"{url}/chat", json={**chat, "messages": []}),  # 400
        requests.post(f"{url}/settings", json={"token": "x"}),  # 401
        requests.post(f"{url}/get-chat", json={"token": token, "chatId": str(uuid.uuid4())}),
        requests.post(f"{url}/nope", json={}),  # 404
        requests.get(f"{url}/settings"),  # 405
        requests.post(f"{url}/settings", data=b" " * (1024 * 1024 + 1)),  # 413
        requests.get(f"{url}/healthz"),
    ]

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("chatsite.api.settings.user_prefs", explode)
    responses.append(requests.post(f"{url}/settings", json={"token": token}))  # 500
    codes = [r.status_code for r in responses]
    assert codes == [200, 200, 400, 401, 404, 404, 405, 413, 200, 500]
    assert all(r.headers["X-Content-Type-Options"] == "nosniff" for r in responses), codes
