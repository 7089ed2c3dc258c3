"""The operator commands, run through Flask's CLI runner: `init-db` and `issue-token`."""

import uuid
from pathlib import Path

import jwt
import pytest

from tests.helpers import TEST_SECRET, app_create_chat, rsa_keys

MAX_EXPIRES = 10 * 365 * 86400  # ten years: the longest token issue-token signs


def test_init_db_creates_the_tables_and_running_it_again_keeps_the_data(make_app, token_for, user):
    app = make_app(tables=False)
    runner = app.test_cli_runner()
    client = app.test_client()

    def post(path, body):
        return client.post(path, json=body)

    token = token_for(user)
    missing = post("/settings", {"token": token})  # no tables yet
    assert missing.status_code in (500, 503) and missing.json["status"] == "error"
    first = runner.invoke(args=["init-db"])
    assert first.exit_code == 0, first.output
    assert first.output.startswith("database ready: ")
    prefs = {"nickname": "Ada", "prompt_data": {"system": "Be brief."}}
    assert post("/update-settings", {"token": token, "prefs": prefs}).status_code == 200
    chat_id = app_create_chat(post, token)
    before = post("/settings", {"token": token}).json

    again = runner.invoke(args=["init-db"])
    assert again.exit_code == 0, again.output
    assert again.output == first.output
    after = post("/settings", {"token": token})
    assert after.status_code == 200
    assert after.json == before
    assert after.json["nickname"] == "Ada"
    assert after.json["chat_files"]["files"] == [{"id": chat_id, "name": "New chat"}]
    chat = post("/get-chat", {"token": token, "chatId": chat_id})
    assert chat.status_code == 200 and chat.json["contents"] == []


@pytest.mark.parametrize(
    "spelling",
    [
        str,
        str.upper,
        lambda u: uuid.UUID(u).hex,
        lambda u: "{" + u + "}",
        lambda u: "urn:uuid:" + u,
    ],
    ids=["canonical", "upper", "hex", "braces", "urn"],
)
def test_issue_token_mints_a_token_the_app_accepts(runner, client, user, spelling):
    """Any spelling of the uuid is signed in its one canonical form, the one the app uses."""
    result = runner.invoke(args=["issue-token", spelling(user)])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    response = client.post("/settings", json={"token": token})
    assert response.status_code == 200
    assert response.json["uuid"] == user


def test_issued_tokens_carry_the_configured_audience_and_issuer(make_app, user):
    app = make_app(JWT_AUDIENCE="chatsite", JWT_ISSUER="https://login.example")
    result = app.test_cli_runner().invoke(args=["issue-token", user])
    assert result.exit_code == 0, result.output
    response = app.test_client().post("/settings", json={"token": result.output.strip()})
    assert response.status_code == 200
    assert response.json["uuid"] == user


@pytest.mark.parametrize(
    "options, lifetime",
    [([], 3600), (["--expires", "120"], 120), (["--expires", str(MAX_EXPIRES)], MAX_EXPIRES)],
)
def test_issue_token_honours_expires(runner, client, user, options, lifetime):
    result = runner.invoke(args=["issue-token", user, *options])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    assert claims["sub"] == user
    assert claims["exp"] - claims["iat"] == lifetime
    assert client.post("/settings", json={"token": token}).status_code == 200


@pytest.mark.parametrize("expires", ["0", "-5", "soon", "1.5", str(MAX_EXPIRES + 1)])
def test_issue_token_refuses_a_bad_expiry(runner, user, expires):
    result = runner.invoke(args=["issue-token", user, "--expires", expires])
    assert result.exit_code == 2
    assert "Invalid value for '--expires'" in result.output
    assert "eyJ" not in result.output  # no token was printed


@pytest.mark.parametrize(
    "bad", ["not-a-uuid", "../../etc/passwd", "", "12345", "0b7c8f7e-3e57-4b8e-9c4f-1f2b3c4d5e6"]
)
def test_issue_token_refuses_a_bad_uuid(runner, bad):
    result = runner.invoke(args=["issue-token", bad])
    assert result.exit_code == 2
    assert "Invalid value for USER_UUID: must be a uuid" in result.output
    assert isinstance(result.exception, SystemExit)  # refused by click, not a crash
    assert "eyJ" not in result.output


def test_issue_token_needs_a_user(runner):
    result = runner.invoke(args=["issue-token"])
    assert result.exit_code == 2
    assert "Missing argument 'USER_UUID'" in result.output


def test_issue_token_fails_clearly_without_an_hs_secret(make_app, user):
    """Under RS256 the site only verifies tokens: it holds no key to sign them with."""
    _, public = rsa_keys()
    app = make_app(JWT_ALGORITHMS=["RS256"], JWT_PUBLIC_KEY=public, JWT_SECRET=None)
    result = app.test_cli_runner().invoke(args=["issue-token", user])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a clear error, not a traceback
    assert "issue-token needs an HS* algorithm and CHATSITE_JWT_SECRET" in result.output
    assert "eyJ" not in result.output


def test_init_db_on_a_database_it_cannot_open_says_so(make_app, tmp_path):
    app = make_app(tables=False, DATABASE_URL=f"sqlite:///{tmp_path / 'no-such-folder' / 'x.db'}")
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 1
    assert "Error: cannot set up the database" in result.output
    assert "Traceback" not in result.output


def test_cleanup_removes_only_transcripts_no_chat_lists(make_app, token_for, user):
    """The chat files no record lists (the SIGKILL test in test_deletes_live.py makes them
    the way a crash does); anything that is not a chat file of a user's folder stays."""
    app = make_app()
    client = app.test_client()
    token = token_for(user)
    kept = app_create_chat(lambda path, body: client.post(path, json=body), token)
    orphan = str(uuid.uuid4())
    chat_dir = Path(app.config["CHAT_DIR"])
    (chat_dir / "notes").mkdir(parents=True)  # not a user's folder: never touched
    (chat_dir / "notes" / f"{orphan}.json").write_text("[]")
    (chat_dir / user).mkdir(exist_ok=True)
    (chat_dir / user / f"{orphan}.json").write_text("[]")  # a file no record lists

    first = app.test_cli_runner().invoke(args=["cleanup"])
    assert first.exit_code == 0, first.output
    assert "removed 1 chat files" in first.output
    assert not (chat_dir / user / f"{orphan}.json").exists()
    assert (chat_dir / "notes" / f"{orphan}.json").exists()
    again = app.test_cli_runner().invoke(args=["cleanup"])
    assert "removed 0 chat files and 0 transcript rows" in again.output
    answer = client.post("/get-chat", json={"token": token, "chatId": kept})
    assert answer.status_code == 200 and answer.json["contents"] == []
