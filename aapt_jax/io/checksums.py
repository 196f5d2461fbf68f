"""A sha256 manifest of the files under a directory, written at save and verified at load.

A flipped or overwritten byte in a saved file would otherwise load as slightly different
weights without any error; the manifest turns it into a refusal that names the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

from aapt_jax.io.files import atomic_write_json

MANIFEST = "checksums.json"
_CHUNK = 1 << 22


class ChecksumError(ValueError):
    """A saved file is missing, truncated or its bytes changed since it was written."""


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def files_under(directory: str) -> list[str]:
    """Paths of every file under ``directory``, relative to it, sorted."""
    out = []
    for dirpath, _, names in os.walk(directory):
        out += [os.path.relpath(os.path.join(dirpath, n), directory) for n in names]
    return sorted(out)


def write_manifest(root: str, subdir: str) -> str:
    """Record ``{relative path: {sha256, bytes}}`` of every file under ``root/subdir`` in
    ``root/checksums.json`` (atomically). Returns the manifest's path."""
    files = {}
    for rel in files_under(os.path.join(root, subdir)):
        path = os.path.join(root, subdir, rel)
        files[os.path.join(subdir, rel)] = {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
    manifest = os.path.join(root, MANIFEST)
    atomic_write_json(manifest, {"algorithm": "sha256", "files": files}, sort_keys=True)
    return manifest


def verify_manifest(root: str) -> bool:
    """Check every file listed in ``root/checksums.json``; False (with a warning) when the
    directory predates manifests.

    Raises:
      ChecksumError naming the first file that is missing, of another size or other bytes.
    """
    manifest = os.path.join(root, MANIFEST)
    if not os.path.isfile(manifest):
        logging.warning("%s: no %s (written by an older version); its files cannot be verified", root, MANIFEST)
        return False
    try:
        with open(manifest) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ChecksumError(f"{manifest}: unreadable checksum manifest ({type(e).__name__}: {e})") from e
    for rel, want in sorted(files.items()):
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            raise ChecksumError(f"{path}: missing (listed in {manifest}); the saved files are incomplete")
        size = os.path.getsize(path)
        if size != want["bytes"]:
            raise ChecksumError(f"{path}: {size} bytes, expected {want['bytes']} (listed in {manifest}); "
                                f"the file was truncated or replaced")
        if sha256_file(path) != want["sha256"]:
            raise ChecksumError(f"{path}: sha256 differs from {manifest}; the file is corrupted, refusing to "
                                f"load it")
    return True
