"""What the task registry refuses, as application errors; `app.errors` maps them to HTTP
(and, on registry paths, to the OCI error body with `oci_code`)."""

from __future__ import annotations


class RegistryError(Exception):
    """A registry request refused; `oci_code` is the OCI distribution error code."""

    oci_code = "UNSUPPORTED"


class RegistryNotFound(RegistryError):
    oci_code = "NAME_UNKNOWN"


class ManifestUnknown(RegistryNotFound):
    oci_code = "MANIFEST_UNKNOWN"


class BlobUnknown(RegistryNotFound):
    oci_code = "BLOB_UNKNOWN"


class UploadUnknown(RegistryNotFound):
    oci_code = "BLOB_UPLOAD_UNKNOWN"


class RegistryDenied(RegistryError):
    oci_code = "DENIED"


class ManifestInvalid(RegistryError):
    """The manifest or the bundle it points at is refused (the message says why)."""

    oci_code = "MANIFEST_INVALID"


class BadDigest(RegistryError):
    oci_code = "DIGEST_INVALID"


class VersionConflict(RegistryError):
    oci_code = "DENIED"
