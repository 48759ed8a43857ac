"""The task registry's infrastructure: blob storage, bundle packing, and the fold of its log.

- `blobs`: content-addressed bytes in the database (sha256 checked on every write).
- `bundles`: a bundle folder <-> the tar.gz layer the `dn` client builds, its digest, and the
  cache of unpacked bundles by digest.
- `log`: the registry's events (task streams) and their fold, kept current by position.
"""
