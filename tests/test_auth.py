"""Sign-in: every bad token is a 401, whatever else the body holds."""

import datetime
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import jwt
import jwt.api_jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import RSAAlgorithm

import chatsite.auth
from chatsite import create_app
from chatsite.auth import ConfigError, TokenVerifier
from chatsite.defaults import JWT_ALGORITHMS
from chatsite.dev.ports import free_port
from tests.helpers import TEST_SECRET, rsa_keys, sign_token


def test_valid_token_is_accepted(post, token_for, user):
    response = post("/settings", {"token": token_for(user)})
    assert response.status_code == 200
    assert response.json["uuid"] == user


@pytest.mark.parametrize(
    "make_token, reason",
    [
        (lambda t: None, "missing"),
        (lambda t: "", "empty"),
        (lambda t: 12345, "not a string"),
        (lambda t: "garbage", "garbage"),
        (lambda t: "a.b.c", "three garbage parts"),
        (lambda t: t(expires_in=-120), "expired"),
        (lambda t: t(secret="another-secret-" + "x" * 40), "bad signature"),
        (lambda t: t(sub=None), "no sub"),
        (lambda t: t(exp=None), "no exp"),
        (lambda t: t(sub="not-a-uuid"), "sub not a uuid"),
        (lambda t: t(sub="../../etc"), "path-like sub"),
        (lambda t: t(nbf=int(time.time()) + 3600), "future nbf"),
        (lambda t: t(algorithm="HS512"), "algorithm not allowed"),
        (lambda t: t() + "x", "tampered signature"),
    ],
)
def test_bad_tokens_are_401(post, token_for, make_token, reason):
    body = {"token": make_token(token_for)} if make_token(token_for) is not None else {}
    response = post("/settings", body)
    assert response.status_code == 401, reason
    assert response.json["status"] == "error"
    assert response.json["msg"]


def test_alg_none_is_rejected(post, user):
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 60}, None, algorithm="none")
    assert post("/settings", {"token": token}).status_code == 401


def test_bad_token_wins_over_other_errors(post):
    response = post("/update-settings", {"token": "nope", "prefs": {"uuid": "x"}, "junk": 1})
    assert response.status_code == 401


def test_token_never_echoed_in_errors(post, token_for):
    token = token_for(expires_in=-100)
    response = post("/settings", {"token": token})
    assert token not in response.get_data(as_text=True)


def test_audience_and_issuer_checked_when_configured(make_app, token_for, user):
    client = make_app(JWT_AUDIENCE="chatsite", JWT_ISSUER="https://login.example").test_client()
    good = token_for(user, aud="chatsite", iss="https://login.example")
    assert client.post("/settings", json={"token": good}).status_code == 200
    for bad in (
        token_for(user, aud="other", iss="https://login.example"),
        token_for(user, aud="chatsite", iss="https://evil.example"),
        token_for(user),
    ):
        assert client.post("/settings", json={"token": bad}).status_code == 401


def test_rs256_with_public_key(make_app, user):
    private, public = rsa_keys()
    client = make_app(
        JWT_ALGORITHMS=["RS256"], JWT_PUBLIC_KEY=public, JWT_SECRET=None
    ).test_client()
    good = sign_token(user, private, "RS256", expires_in=60)
    assert client.post("/settings", json={"token": good}).status_code == 200
    other_private, _ = rsa_keys()
    forged = sign_token(user, other_private, "RS256", expires_in=60)
    assert client.post("/settings", json={"token": forged}).status_code == 401


def test_public_key_used_as_hmac_secret_is_rejected(make_app, user):
    """The classic algorithm-confusion attack: sign HS256 with the RS256 public key."""
    _, public = rsa_keys()
    client = make_app(
        JWT_ALGORITHMS=["RS256"], JWT_PUBLIC_KEY=public, JWT_SECRET=None
    ).test_client()
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    payload = jwt.utils.base64url_encode(
        f'{{"sub":"{user}","exp":{int(time.time()) + 60}}}'.encode()
    )
    signing_input = header + b"." + payload
    signature = hmac.new(public.encode(), signing_input, hashlib.sha256).digest()
    token = (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()
    assert client.post("/settings", json={"token": token}).status_code == 401


def test_es256_with_public_key(make_app, user):
    key = ec.generate_private_key(ec.SECP256R1())
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    client = make_app(
        JWT_ALGORITHMS=["ES256"], JWT_PUBLIC_KEY=public, JWT_SECRET=None
    ).test_client()
    token = sign_token(user, key, "ES256", expires_in=60)
    assert client.post("/settings", json={"token": token}).status_code == 200


@pytest.mark.parametrize(
    "config, message",
    [
        ({"JWT_SECRET": None}, "JWT_SECRET"),
        ({"JWT_SECRET": "short"}, "32 bytes"),
        ({"JWT_ALGORITHMS": ["none"]}, "supported"),
        ({"JWT_ALGORITHMS": []}, "supported"),
        ({"JWT_ALGORITHMS": ["HS256", "RS256"], "JWT_PUBLIC_KEY": "k"}, "mix"),
        ({"JWT_ALGORITHMS": ["RS256"], "JWT_SECRET": None}, "PUBLIC_KEY"),
    ],
)
def test_unsafe_configuration_refuses_to_start(config, message):
    settings = {"JWT_ALGORITHMS": JWT_ALGORITHMS, "JWT_SECRET": TEST_SECRET, "JWT_LEEWAY": 0}
    settings.update(config)
    with pytest.raises(ConfigError, match=message):
        TokenVerifier(settings)


def test_app_refuses_to_start_without_secret(tmp_path):
    with pytest.raises(ConfigError):
        create_app({"DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}, instance_path=str(tmp_path))


def test_jwks_url_keys_are_fetched_and_used(make_app, user):
    """RS256 keys from a JWKS endpoint (a real local HTTP server), cached by PyJWKClient."""
    private, public = rsa_keys()
    jwk = json.loads(RSAAlgorithm.to_jwk(serialization.load_pem_public_key(public.encode())))
    jwk.update({"kid": "key-1", "use": "sig", "alg": "RS256"})
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = json.dumps({"keys": [jwk]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json"
        client = make_app(JWT_ALGORITHMS=["RS256"], JWT_JWKS_URL=url, JWT_SECRET=None).test_client()
        good = sign_token(user, private, "RS256", expires_in=60, headers={"kid": "key-1"})
        for _ in range(3):
            assert client.post("/settings", json={"token": good}).status_code == 200
        assert len(hits) == 1  # cached
        unknown_kid = sign_token(user, private, "RS256", expires_in=60, headers={"kid": "other"})
        assert client.post("/settings", json={"token": unknown_kid}).status_code == 401
    finally:
        server.shutdown()
        server.server_close()


def test_remembered_token_still_expires(make_app, token_for, user, monkeypatch):
    """Verified tokens are cached briefly, but never past their `exp`."""
    client = make_app(JWT_LEEWAY=0).test_client()
    token = token_for(user, expires_in=2)
    assert client.post("/settings", json={"token": token}).status_code == 200
    assert client.post("/settings", json={"token": token}).status_code == 200  # from the cache

    # Three seconds later, for the verifier's cache and for PyJWT's claim checks alike.
    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime.now(tz) + datetime.timedelta(seconds=3)

    monkeypatch.setattr(chatsite.auth, "time", SimpleNamespace(time=lambda: time.time() + 3))
    monkeypatch.setattr(jwt.api_jwt, "datetime", Later)
    response = client.post("/settings", json={"token": token})
    assert response.status_code == 401
    assert response.json["msg"] == "token expired"


def test_unreachable_jwks_is_503_not_401(make_app, user):
    url = f"http://127.0.0.1:{free_port()}/jwks.json"
    client = make_app(JWT_ALGORITHMS=["RS256"], JWT_JWKS_URL=url, JWT_SECRET=None).test_client()
    private, _ = rsa_keys()
    token = sign_token(user, private, "RS256", expires_in=60, headers={"kid": "key-1"})
    response = client.post("/settings", json={"token": token})
    assert response.status_code == 503
    assert response.json["status"] == "error"


@pytest.mark.parametrize("exp", [10**400, -(10**400)])
def test_an_expiry_no_float_can_hold_is_401(live, token_for, exp):
    """Signed, so PyJWT accepts 10**400 as far in the future; chatsite must still say 401."""
    response = requests.post(f"{live.url}/settings", json={"token": token_for(exp=exp)})
    assert response.status_code == 401
    assert response.json()["status"] == "error"
