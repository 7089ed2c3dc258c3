"""/settings and /update-settings: partial updates, validation, nothing half-changed."""

import pytest
import requests


def settings(post, token):
    response = post("/settings", {"token": token})
    assert response.status_code == 200
    return response.json


def test_first_sight_creates_default_record(post, token_for, user):
    assert settings(post, token_for(user)) == {
        "uuid": user,
        "nickname": "",
        "prompt_data": {"system": ""},
        "site_prefs": {"model": ""},
        "chat_files": {"files": []},
    }


def test_no_record_without_auto_create(make_app, token_for):
    client = make_app(AUTO_CREATE_USERS=False).test_client()
    token = token_for()
    response = client.post("/settings", json={"token": token})
    assert response.status_code == 500
    assert response.json == {"status": "error", "msg": "No user data found"}
    response = client.post("/update-settings", json={"token": token, "prefs": {"nickname": "a"}})
    assert response.status_code == 500
    response = client.post("/create-chat", json={"token": token})
    assert response.status_code == 400
    assert response.json["status"] == "nodata"


def test_partial_updates_change_only_given_fields(post, token_for, user):
    token = token_for(user)
    response = post("/update-settings", {"token": token, "prefs": {"nickname": "  Ada  "}})
    assert response.status_code == 200
    assert response.json["status"] == "ok"
    assert response.json["msg"] == "settings updated"
    assert response.json["userprefs"]["nickname"] == "Ada"
    post("/update-settings", {"token": token, "prefs": {"prompt_data": {"system": "Be brief."}}})
    post("/update-settings", {"token": token, "prefs": {"site_prefs": {"model": "llama3"}}})
    prefs = settings(post, token)
    assert prefs["nickname"] == "Ada"
    assert prefs["prompt_data"] == {"system": "Be brief."}
    assert prefs["site_prefs"] == {"model": "llama3:latest"}
    response = post("/update-settings", {"token": token, "prefs": {}})
    assert response.status_code == 200
    assert response.json["userprefs"] == prefs


@pytest.mark.parametrize(
    "prefs, field",
    [
        ({"nickname": ""}, "prefs.nickname"),
        ({"nickname": "   "}, "prefs.nickname"),
        ({"nickname": "x" * 33}, "prefs.nickname"),
        ({"nickname": "bad\x07name"}, "prefs.nickname"),
        ({"nickname": "line\nbreak"}, "prefs.nickname"),
        ({"nickname": 42}, "prefs.nickname"),
        ({"nickname": None}, "prefs.nickname"),
        ({"prompt_data": {"system": "x" * 8001}}, "prefs.prompt_data.system"),
        ({"prompt_data": {"system": 5}}, "prefs.prompt_data.system"),
        ({"prompt_data": "text"}, "prefs.prompt_data"),
        ({"prompt_data": {"other": "x"}}, "prefs.prompt_data.other"),
        ({"site_prefs": {"model": ""}}, "prefs.site_prefs.model"),
        ({"site_prefs": {"model": "bad model name"}}, "prefs.site_prefs.model"),
        ({"site_prefs": {"model": "m" * 201}}, "prefs.site_prefs.model"),
        ({"uuid": "0b7c8f7e-3e57-4b8e-9c4f-1f2b3c4d5e6f"}, "prefs.uuid"),
        ({"chat_files": {"files": []}}, "prefs.chat_files"),
        ({"nickname": "ok", "color": "red"}, "prefs.color"),
    ],
)
def test_invalid_update_is_400_and_changes_nothing(post, token_for, user, prefs, field):
    token = token_for(user)
    post("/update-settings", {"token": token, "prefs": {"nickname": "Before"}})
    before = settings(post, token)
    response = post("/update-settings", {"token": token, "prefs": {"nickname": "After", **prefs}})
    assert response.status_code == 400
    assert response.json["status"] == "error"
    assert field in response.json["msg"]
    assert settings(post, token) == before


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "prefs"),
        ({"prefs": None}, "prefs"),
        ({"prefs": []}, "prefs"),
        ({"prefs": {}, "extra": 1}, "extra"),
    ],
)
def test_malformed_update_bodies(post, token_for, body, field):
    response = post("/update-settings", {"token": token_for(), **body})
    assert response.status_code == 400
    assert field in response.json["msg"]


def test_unicode_nickname_and_limits(post, token_for, user):
    token = token_for(user)
    nickname = "Zoë 🚀" + "é" * 26
    response = post("/update-settings", {"token": token, "prefs": {"nickname": nickname}})
    assert response.status_code == 200
    assert settings(post, token)["nickname"] == nickname
    long_prompt = "p" * 8000
    response = post(
        "/update-settings", {"token": token, "prefs": {"prompt_data": {"system": long_prompt}}}
    )
    assert response.status_code == 200


def test_system_prompt_limit_is_configurable(make_app, token_for):
    client = make_app(MAX_SYSTEM_PROMPT_CHARS=10).test_client()
    body = {"token": token_for(), "prefs": {"prompt_data": {"system": "x" * 11}}}
    assert client.post("/update-settings", json=body).status_code == 400


def test_users_are_isolated(post, token_for):
    alice, bob = token_for(), token_for()
    post("/update-settings", {"token": alice, "prefs": {"nickname": "alice"}})
    assert settings(post, bob)["nickname"] == ""


@pytest.mark.parametrize(
    "nickname",
    [
        "evil\u202egnp.exe",  # RIGHT-TO-LEFT OVERRIDE
        "zero\u200bwidth",  # ZERO WIDTH SPACE
        "join\u200dme",  # ZERO WIDTH JOINER
        "\ufeffbom",  # ZERO WIDTH NO-BREAK SPACE
        "soft\u00adhyphen",  # SOFT HYPHEN
        "tag\U000e0041",  # TAG LATIN CAPITAL LETTER A
    ],
)
def test_invisible_formatting_characters_are_refused(live, token_for, user, nickname):
    """Unicode category Cf, like Cc: a nickname must read as what it is (over real HTTP)."""
    token = token_for(user)
    url = f"{live.url}/update-settings"
    assert requests.post(url, json={"token": token, "prefs": {"nickname": "Before"}}).ok
    response = requests.post(url, json={"token": token, "prefs": {"nickname": nickname}})
    assert response.status_code == 400
    assert "prefs.nickname" in response.json()["msg"]
    assert "invisible" in response.json()["msg"]
    settings = requests.post(f"{live.url}/settings", json={"token": token}).json()
    assert settings["nickname"] == "Before"
