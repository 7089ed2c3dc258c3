"""GET /openapi.json: every route described, a valid OpenAPI 3 document, true to the answers.

Real answers (over HTTP, from the development chat instance) are loaded with the response
schemas the description is built from, and their status codes must be among those the
description lists for their path; docs/API.md must name every path and request field.
"""

import json
import re

import pytest
import requests
from marshmallow import Schema
from openapi_spec_validator import validate

from chatsite.api import responses
from chatsite.api.description import UNDESCRIBED, openapi_path
from tests.servers import ROOT

API_DOC = ROOT / "docs" / "API.md"


@pytest.fixture
def database_url(tmp_path):
    """SQLite only: the description, not the database, is under test."""
    return f"sqlite:///{tmp_path / 'chatsite.db'}"


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    return response.json


def routes(app):
    """Every (method, OpenAPI path) the app serves, HEAD and OPTIONS aside."""
    return {
        (method.lower(), openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def test_every_route_is_described(app, document):
    described = {(m, path) for path, ops in document["paths"].items() for m in ops}
    assert described == routes(app)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            assert operation["summary"] != UNDESCRIBED, where
            assert "200" in operation["responses"], where
            if method == "post":
                assert operation["requestBody"]["required"] is True, where
                assert {"400", "401", "413"} <= set(operation["responses"]), where


def test_the_document_is_valid_openapi(document):
    validate(document)
    assert document["openapi"].startswith("3.")


def test_request_schemas_say_what_validation_does(make_app):
    app = make_app(
        MAX_PROMPT_CHARS=1234,
        MAX_MESSAGES=7,
        MAX_NUM_PREDICT=99,
        ALLOWED_OPTIONS={"num_ctx": [2048, 8192]},
    )
    document = app.test_client().get("/openapi.json")
    schemas = document.json["components"]["schemas"]
    request_bodies = [
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        for ops in document.json["paths"].values()
        for op in ops.values()
        if "requestBody" in op
    ]
    for name in reachable(schemas, request_bodies):
        assert schemas[name]["additionalProperties"] is False, name
    assert schemas["Generate"]["properties"]["prompt"]["maxLength"] == 1234
    assert schemas["Chat"]["properties"]["messages"]["maxItems"] == 7
    assert schemas["Chat"]["required"] == ["messages", "token"]
    nickname = schemas["Prefs"]["properties"]["nickname"]
    assert (nickname["minLength"], nickname["maxLength"]) == (1, 32)
    options = schemas["Options"]
    assert schemas["Chat"]["properties"]["options"]["$ref"].endswith("/Options")
    assert schemas["Generate"]["properties"]["options"]["$ref"].endswith("/Options")
    assert options["additionalProperties"] is False
    assert options["properties"]["num_predict"]["maximum"] == 99
    assert options["properties"]["num_ctx"] == {
        "description": "Allowed by the operator (ALLOWED_OPTIONS).",
        "type": "number",
        "minimum": 2048,
        "maximum": 8192,
        "nullable": True,
    }
    assert options["properties"]["seed"]["type"] == "integer"
    assert "num_gpu" not in options["properties"]
    assert schemas["Message"]["properties"]["role"]["enum"] == [
        "user",
        "assistant",
        "tool",
        "system",
    ]


def test_errors_and_streams_are_described(document):
    chat = document["paths"]["/chat"]["post"]["responses"]
    for code in ("400", "401", "404", "413", "429", "503", "504"):
        answer = document["components"]["responses"][chat[code]["$ref"].rsplit("/", 1)[1]]
        assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    lines = chat["200"]["content"]["application/x-ndjson"]["schema"]["oneOf"]
    assert {line["$ref"].rsplit("/", 1)[1] for line in lines} >= {"ChatLine", "StreamError"}
    generate = document["paths"]["/generate"]["post"]["responses"]["200"]["content"]
    assert "application/x-ndjson" in generate


def reachable(schemas, names):
    """The schema names reachable from `names` through $refs."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(schemas[name]))
    return seen


def test_docs_api_md_names_every_path_and_request_field(document):
    text = API_DOC.read_text()
    for path, operations in document["paths"].items():
        written = re.sub(r"\{(\w+)\}", r"<\1>", path)  # /docs/{asset} -> /docs/<asset>
        for method in operations:
            pattern = rf"`(?:{method.upper()} )?{re.escape(written)}`"
            assert re.search(pattern, text), f"{method.upper()} {path} is not in docs/API.md"
    schemas = document["components"]["schemas"]
    request_bodies = [
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        for ops in document["paths"].values()
        for op in ops.values()
        if "requestBody" in op
    ]
    for name in reachable(schemas, request_bodies):
        for field, described in schemas[name].get("properties", {}).items():
            if "ALLOWED_OPTIONS" in described.get("description", ""):
                continue  # an operator's option (the tests allow the dev instance's knobs)
            assert f"`{field}`" in text, f"{name}.{field} is not in docs/API.md"


def load(schema: type[Schema], data, many=False):
    """Load an answer with its documented schema: unknown fields or wrong types fail."""
    schema(many=many).load(data)


def documented(document, path, code):
    return str(code) in document["paths"][path]["post"]["responses"]


def test_real_answers_match_the_description(live, document, token_for, upstream):
    token = token_for()
    url = live.url

    def post(path, body, code=200):
        response = requests.post(f"{url}{path}", json=body, timeout=10)
        assert response.status_code == code, response.text
        assert documented(document, path, code), (path, code)
        return response

    load(responses.UserPrefsSchema, post("/settings", {"token": token}).json())
    chat_id = post("/create-chat", {"token": token}).json()
    load(responses.ChatCreatedSchema, chat_id)
    prefs = {"nickname": "Ada", "site_prefs": {"model": "echo"}}
    body = post("/update-settings", {"token": token, "prefs": prefs}).json()
    load(responses.SettingsUpdatedSchema, body)
    load(responses.ModelListSchema, post("/models", {"token": token}).json())
    message = [{"role": "user", "content": "hi"}]
    chat = post("/chat", {"token": token, "messages": message, "chatfile": chat_id["chatId"]})
    lines = [json.loads(line) for line in chat.text.splitlines()]
    load(responses.ChatLineSchema, lines, many=True)
    generate = post("/generate", {"token": token, "prompt": "abc", "model": "echo"})
    load(responses.GenerateLineSchema, [json.loads(x) for x in generate.text.splitlines()], True)
    contents = post("/get-chat", {"token": token, "chatId": chat_id["chatId"]}).json()
    load(responses.ChatContentsSchema, contents)
    broken = post("/chat", {"token": token, "messages": message, "model": "broken"})
    last = json.loads(broken.text.splitlines()[-1])
    load(responses.StreamErrorSchema, last)

    for path, body, code in [
        ("/settings", {"token": "not a jwt"}, 401),
        ("/settings", {"token": token, "extra": 1}, 400),
        ("/get-chat", {"token": token, "chatId": "6f1c8a52-3f7e-4f0e-9a51-2b7d0d2c9e11"}, 404),
        ("/chat", {"token": token, "messages": message, "model": "nosuchmodel"}, 400),
        ("/settings", {"token": token, "pad": "x" * (2 * 1024 * 1024)}, 413),
    ]:
        load(responses.ErrorSchema, post(path, body, code).json())

    health = requests.get(f"{url}/healthz", timeout=10)
    assert str(health.status_code) in document["paths"]["/healthz"]["get"]["responses"]
    load(responses.HealthSchema, health.json())


def test_docs_assets_are_the_apps_own(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "validatorUrl: null" in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(asset.startswith("/") for asset in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert client.get("/docs/../setup.cfg").status_code == 404
    assert client.get("/docs/index.html").status_code == 404  # only the page's own assets
