"""Credentials: API key generation and hashing, secret encryption key, masking.

Nothing here logs a key, a secret value or a path's contents (only where a key file is), and
no error message includes them.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import os
import secrets
from pathlib import Path

import structlog
from cryptography.fernet import Fernet

from infrastructure.settings import Settings

API_KEY_PREFIX = "assay_"
# Characters of the raw key kept for display: "assay_" plus 6 of the 43 random ones (36 of
# 256 bits), enough to tell keys apart, far too few to help guessing the rest.
DISPLAY_PREFIX_LENGTH = 12
# Values shorter than this show no characters at all in their mask: four characters of an
# eight-character password would give away half of it.
MASK_MIN_LENGTH = 12
MASK_VISIBLE = 4

log = structlog.get_logger("assay.identity")


class SecretKeyMissing(ValueError):
    """A deployment whose processes cannot share a generated key file has no key configured."""


MISSING_KEY = (
    "ASSAY_SECRET_KEY is not set: on PostgreSQL every server and worker must share one key. "
    "Make one with `python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'` and set ASSAY_SECRET_KEY (or ASSAY_SECRET_KEY_FILE)"
)


def secret_key_problem(settings: Settings) -> str | None:
    """Why no cipher can be had, said before anything starts; None when one can."""
    if settings.secret_key or settings.secret_key_file or settings.is_sqlite:
        return None
    return MISSING_KEY


def generate_api_key() -> str:
    """A new raw API key: the prefix and 32 random bytes, urlsafe base64 (shown once)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(raw_key: str) -> str:
    # The raw key holds 256 random bits, so one SHA-256 pass is enough: there is no dictionary
    # to attack and no need for a slow, salted password hash on every request. Looking the hash
    # up through a unique index also means no secret-dependent comparison happens in Python.
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def display_prefix(raw_key: str) -> str:
    return raw_key[:DISPLAY_PREFIX_LENGTH]


def mask_value(value: str) -> str:
    """`…abcd`: at most the last four characters, none for short values."""
    if len(value) < MASK_MIN_LENGTH:
        return "…"
    return "…" + value[-MASK_VISIBLE:]


def load_cipher(settings: Settings) -> Fernet:
    """The Fernet that encrypts secret values at rest.

    `settings.secret_key` wins. Otherwise the key lives in `settings.resolved_secret_key_file()`,
    generated there (mode 0600) on first start, so the embedded default needs no setup.
    """
    if settings.secret_key:
        return _fernet(settings.secret_key.encode("ascii", "replace"), "ASSAY_SECRET_KEY")
    problem = secret_key_problem(settings)
    if problem is not None:
        raise SecretKeyMissing(problem)
    path = settings.resolved_secret_key_file()
    legacy = None if settings.secret_key_file else settings.legacy_secret_key_file()
    if not path.exists() and legacy is not None and legacy.exists():
        # An install from before the data directory: keep using its key (the secrets stored
        # so far are encrypted with it), and say where it belongs now.
        log.warning(
            "secret_key_file_in_old_place",
            found=str(legacy),
            move_to=str(path),
            hint=f"mkdir -p {path.parent} && mv {legacy} {path}",
        )
        path = legacy
    elif not path.exists():
        _create_key_file(path)
    return _fernet(path.read_bytes().strip(), f"the secret key file {path}")


def _fernet(key: bytes, source: str) -> Fernet:
    try:
        return Fernet(key)
    except (ValueError, binascii.Error):
        # `from None`: the original error chain could carry the key material.
        raise ValueError(
            f"{source} is not a valid Fernet key (32 url-safe base64-encoded bytes)"
        ) from None


def _create_key_file(path: Path) -> None:
    # The data directory is the service's own: private to its user, like the key inside.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written in full to a private temporary file, then hard-linked into place: linking never
    # replaces an existing file, so when two processes start at once both end up reading the
    # one key that won, and nobody ever reads a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
