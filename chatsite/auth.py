"""Sign-in: verify the site's JWT and turn its `sub` into the user's uuid."""

import logging
import time
from typing import Any

import jwt

from .ids import canonical_uuid

log = logging.getLogger(__name__)

HMAC_ALGORITHMS = {"HS256", "HS384", "HS512"}
ASYMMETRIC_ALGORITHMS = {
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
}
MIN_SECRET_BYTES = 32
MAX_TOKEN_CHARS = 8192
# Verified tokens are remembered briefly: the signature check is most of a request's
# sign-in cost, and a front end sends the same token with every request.
VERIFIED_CACHE_SIZE = 10_000
VERIFIED_CACHE_SECONDS = 60


class ConfigError(RuntimeError):
    """The sign-in configuration is unsafe or incomplete; the app must not start."""


class SignInRefused(Exception):
    """The token signs nobody in (missing, invalid, expired); the message says why."""


class SignInUnavailable(Exception):
    """The keys that check tokens cannot be fetched now; trying again later may work."""


class TokenVerifier:
    """Verify tokens with pinned algorithms and keys fixed at start-up."""

    def __init__(self, config: dict[str, Any]) -> None:
        algorithms = config["JWT_ALGORITHMS"]
        if isinstance(algorithms, str):
            algorithms = [a.strip() for a in algorithms.split(",") if a.strip()]
        algorithms = list(algorithms or [])
        unknown = set(algorithms) - HMAC_ALGORITHMS - ASYMMETRIC_ALGORITHMS
        if not algorithms or unknown:
            raise ConfigError(f"JWT_ALGORITHMS must list supported algorithms, got {algorithms}")
        symmetric = set(algorithms) & HMAC_ALGORITHMS
        if symmetric and len(symmetric) != len(algorithms):
            raise ConfigError("JWT_ALGORITHMS must not mix HS* with RS*/ES* algorithms")
        self.algorithms = algorithms
        self.audience = config.get("JWT_AUDIENCE") or None
        self.issuer = config.get("JWT_ISSUER") or None
        self.leeway = float(config.get("JWT_LEEWAY") or 0)
        self._jwks = None
        self._verified: dict[str, tuple[str, float]] = {}
        if symmetric:
            secret = config.get("JWT_SECRET") or ""
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"CHATSITE_JWT_SECRET must be set to at least {MIN_SECRET_BYTES} bytes"
                )
            self._key = secret
        elif config.get("JWT_PUBLIC_KEY"):
            self._key = config["JWT_PUBLIC_KEY"]
        elif config.get("JWT_JWKS_URL"):
            self._key = None
            self._jwks = jwt.PyJWKClient(
                config["JWT_JWKS_URL"], cache_keys=True, lifespan=300, timeout=5
            )
        else:
            raise ConfigError("CHATSITE_JWT_PUBLIC_KEY or CHATSITE_JWT_JWKS_URL must be set")

    def user_id(self, token: object) -> str:
        """Return the token's `sub`, or raise SignInRefused."""
        if not isinstance(token, str) or not token:
            raise SignInRefused("missing token")
        if len(token) > MAX_TOKEN_CHARS:
            raise SignInRefused("invalid token")
        cached = self._verified.get(token)
        now = time.time()
        if cached is not None and now < cached[1]:
            return cached[0]
        claims = self._verify(token)
        try:
            # The uuid names the user's chat folder, so only a real uuid is accepted.
            subject = canonical_uuid(claims["sub"])
        except (TypeError, ValueError, AttributeError):
            raise SignInRefused("invalid token subject: not a uuid") from None
        try:
            # PyJWT compares an integer `exp` exactly: 10**400 passes it, but no float holds it.
            expires = float(claims["exp"]) + self.leeway
        except (OverflowError, TypeError, ValueError):
            raise SignInRefused("invalid token expiry") from None
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (subject, min(expires, now + VERIFIED_CACHE_SECONDS))
        return subject

    def _verify(self, token: str) -> dict[str, Any]:
        """Check signature and claims; raise SignInRefused (or SignInUnavailable)."""
        try:
            key = self._key
            if self._jwks is not None:
                key = self._jwks.get_signing_key_from_jwt(token).key
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self.audience is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise SignInRefused("token expired") from None
        except jwt.PyJWKClientConnectionError:
            log.error("the JWKS endpoint is unreachable")
            raise SignInUnavailable("sign-in keys are unavailable, try again shortly") from None
        except (jwt.PyJWTError, ValueError) as error:
            log.info("rejected token: %s", type(error).__name__)
            raise SignInRefused("invalid token") from None
        return claims

    def issue(self, subject: str, expires_in: int = 3600) -> str:
        """Sign a development token with the configured HS secret."""
        if self._key is None or self.algorithms[0] not in HMAC_ALGORITHMS:
            raise ConfigError("issue-token needs an HS* algorithm and CHATSITE_JWT_SECRET")
        now = int(time.time())
        claims: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + int(expires_in)}
        if self.audience:
            claims["aud"] = self.audience
        if self.issuer:
            claims["iss"] = self.issuer
        return jwt.encode(claims, self._key, algorithm=self.algorithms[0])
