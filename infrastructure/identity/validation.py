"""Input rules of the identity store, checked before any insert.

Checked in Python rather than left to the database because SQLite ignores VARCHAR lengths:
both backends must accept and refuse exactly the same values.
"""

from __future__ import annotations

import re

from infrastructure.identity.records import ROLE_NAMES, InvalidValue, Role

# A subset of the wire's `[a-z0-9-]+`: bounded, and never starting with "-" (a slug that looks
# like a command-line option is a trap). Every slug stored here matches the route pattern.
SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Secret names are what people type after `dn ... --secret`, often env-var style.
SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
PROVIDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
MAX_SECRET_BYTES = 64 * 1024


def slug(value: str, what: str) -> str:
    if not SLUG.fullmatch(value):
        raise InvalidValue(
            f"{what} {value!r} is not a slug: 1-64 of a-z, 0-9 and '-', not starting with '-'"
        )
    return value


def text(value: str, what: str, max_length: int = 255, *, allow_empty: bool = False) -> str:
    value = value.strip()
    if not value and not allow_empty:
        raise InvalidValue(f"{what} must not be empty")
    if len(value) > max_length:
        raise InvalidValue(f"{what} is longer than {max_length} characters")
    return value


def email(value: str) -> str:
    # Lower-cased once here, so lookups and the unique index are case-insensitive.
    value = value.strip().lower()
    if len(value) > 320 or not EMAIL.fullmatch(value):
        raise InvalidValue(f"{value!r} is not an email address")
    return value


def username(value: str) -> str:
    if not USERNAME.fullmatch(value):
        raise InvalidValue(f"username {value!r} must be 1-64 of letters, digits, '.', '_' and '-'")
    return value


def username_from_email(email: str) -> str:
    """The local part of the address, reduced to what a username may hold."""
    local = re.sub(r"[^a-z0-9._-]", "", email.split("@", 1)[0].lower())
    local = local.lstrip("._-")[:64]
    return local or "user"


def free_username(base: str, taken: set[str]) -> str:
    """`base`, else `base-2`, `base-3`, ...: the first that is not taken (at most 64 chars)."""
    if base not in taken:
        return base
    suffix = 2
    while True:
        tail = f"-{suffix}"
        candidate = base[: 64 - len(tail)] + tail
        if candidate not in taken:
            return candidate
        suffix += 1


def role(value: str) -> Role:
    for name in ROLE_NAMES:
        if value == name:
            return name
    raise InvalidValue(f"role {value!r} is not one of {', '.join(ROLE_NAMES)}")


def secret_name(value: str) -> str:
    if not SECRET_NAME.fullmatch(value):
        raise InvalidValue(
            f"secret name {value!r} must be 1-128 of letters, digits, '_', '.' and '-'"
        )
    return value


def provider(value: str) -> str:
    if not PROVIDER.fullmatch(value):
        raise InvalidValue(f"provider {value!r} must be 1-64 of letters, digits, '_', '.', '-'")
    return value


def secret_value(value: str) -> str:
    # The message never quotes the value.
    if not value:
        raise InvalidValue("secret value must not be empty")
    if len(value.encode("utf-8")) > MAX_SECRET_BYTES:
        raise InvalidValue(f"secret value is larger than {MAX_SECRET_BYTES} bytes")
    return value


def base_url(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value.startswith(("http://", "https://")) or len(value) > 2048:
        # Not quoted: a URL can carry credentials (https://user:token@host).
        raise InvalidValue("base URL must be an http(s) URL of at most 2048 characters")
    return value


def seconds(value: int | None, what: str) -> int | None:
    if value is not None and value < 1:
        raise InvalidValue(f"{what} must be a positive number of seconds")
    return value
