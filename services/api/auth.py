"""Users, roles, argon2 password hashes and expiring JWT bearer tokens.

Roles are ordered ``viewer < operator < engineer < admin``: an endpoint names the lowest
role it needs. Passwords are stored only as argon2id hashes (argon2-cffi). Tokens are
HS256 JWTs (PyJWT) naming the user, role, issue and expiry time; a token is refused when
its signature, algorithm, issuer, audience or expiry is wrong, or when its user is no
longer configured (the role in force is the configured one, never more than the token's).
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["AuthError", "Role", "TokenIssuer", "User", "UserStore", "hash_password"]

ISSUER = "bpcontrol"
AUDIENCE = "bpcontrol-api"
ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
"""HS256 keys shorter than the hash output (32 bytes) are refused (RFC 7518 3.2)."""

CACHE_SIZE = 4096
"""Checked tokens remembered (all are forgotten when it is full)."""

_HASHER = PasswordHasher()


class Role(enum.IntEnum):
    """What a user may do; a higher role may do everything a lower one may."""

    VIEWER = 1
    OPERATOR = 2
    ENGINEER = 3
    ADMIN = 4

    @classmethod
    def parse(cls, text: object) -> Role:
        """The role named ``text`` (``"operator"``); ValueError naming the roles if unknown."""
        try:
            return cls[str(text).upper()]
        except KeyError:
            names = ", ".join(r.name.lower() for r in cls)
            raise ValueError(f"unknown role {text!r}; use one of {names}") from None


class AuthError(Exception):
    """A request whose credentials or token cannot be accepted (the message says why)."""


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (store this, never the password)."""
    return _HASHER.hash(password)


@dataclass(frozen=True)
class User:
    """A configured user: name, role and argon2 password hash."""

    name: str
    role: Role
    password_hash: str


class UserStore:
    """The configured users (read-only after start)."""

    def __init__(self, users: Mapping[str, User]) -> None:
        self._users = dict(users)
        # a hash to verify against for unknown names, so timing does not tell who exists
        self._dummy = hash_password(uuid.uuid4().hex)

    def __len__(self) -> int:
        return len(self._users)

    def get(self, name: str) -> User | None:
        """The user called ``name``, or None."""
        return self._users.get(name)

    def authenticate(self, name: str, password: str) -> User:
        """The user when ``password`` is theirs; :class:`AuthError` otherwise."""
        user = self._users.get(name)
        try:
            _HASHER.verify(user.password_hash if user else self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            raise AuthError("wrong user name or password") from None
        if user is None:
            raise AuthError("wrong user name or password")
        return user


@dataclass(frozen=True)
class TokenIssuer:
    """Issues and checks bearer tokens signed with ``secret`` that live ``ttl_s`` seconds.

    A token whose signature and claims were checked once is remembered (up to
    ``CACHE_SIZE`` tokens) with its expiry, so a client's next requests cost a dictionary
    look-up; expiry and the user's configuration are checked on every request all the same.
    """

    secret: str
    ttl_s: float
    _checked: dict[str, tuple[str, Role, float]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def issue(self, user: User, *, now: float | None = None) -> str:
        """A signed token for ``user`` (expires ``ttl_s`` after ``now``, UNIX s)."""
        iat = time.time() if now is None else now
        claims = {
            "sub": user.name,
            "role": user.role.name.lower(),
            "iat": int(iat),
            "exp": int(iat + self.ttl_s),
            "iss": ISSUER,
            "aud": AUDIENCE,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def check(self, token: str, users: UserStore) -> User:
        """The user a valid ``token`` names (with the role configured now, capped by the
        token's); :class:`AuthError` saying why otherwise."""
        known = self._checked.get(token)
        if known is not None:
            name, role, exp = known
            if time.time() >= exp:
                self._checked.pop(token, None)
                raise AuthError("token expired; log in again")
            user = users.get(name)
            if user is None:
                raise AuthError("token names no configured user")
            return User(user.name, min(role, user.role), user.password_hash)
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "role", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired; log in again") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token ({type(exc).__name__})") from None
        user = users.get(str(claims["sub"]))
        if user is None:
            raise AuthError("token names no configured user")
        try:
            role = Role.parse(claims["role"])
        except ValueError:
            raise AuthError("token names an unknown role") from None
        if len(self._checked) >= CACHE_SIZE:
            self._checked.clear()
        self._checked[token] = (user.name, role, float(claims["exp"]))
        return User(user.name, min(role, user.role), user.password_hash)
