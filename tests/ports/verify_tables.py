"""Verify quicdesign table collections from docs/table-format.md alone.

Standard library only, and deliberately no ``import quicdesign``: this is what a port in
another language does. Usage: ``python verify_tables.py COLLECTION_DIR...``; prints one
line per table and exits 1 on the first failure.
"""

import hashlib
import json
import math
import struct
import sys
from pathlib import Path

SELF_HASH_KEYS = ("manifest_bytes_sha256", "manifest_sha256")
HEX_DIGITS = set(b"0123456789abcdef")


class Invalid(Exception):
    """The table does not match its recorded checksums."""


def zeroed_manifest_digest(raw):
    """sha256 of the raw manifest with every self-hash value's 64 digits set to "0"."""
    data = bytearray(raw)
    for key in SELF_HASH_KEYS:
        marker = ('"' + key + '": "').encode("ascii")
        start = data.find(marker)
        if start < 0:
            continue
        if data.find(marker, start + 1) >= 0:
            raise Invalid(key + " occurs twice")
        begin = start + len(marker)
        value = data[begin : begin + 64]
        if len(value) != 64 or not set(value) <= HEX_DIGITS or data[begin + 64] != ord('"'):
            raise Invalid(key + " is not 64 lowercase hex digits")
        data[begin : begin + 64] = b"0" * 64
    return hashlib.sha256(bytes(data)).hexdigest()


def verify_table(folder, expected_manifest_sha256):
    raw = (folder / "manifest.json").read_bytes()
    if hashlib.sha256(raw).hexdigest() != expected_manifest_sha256:
        raise Invalid("manifest bytes differ from the index")
    manifest = json.loads(raw)
    fmt = manifest["format"]
    if fmt["name"] != "quicdesign-table" or fmt["major"] != 1 or fmt["minor"] < 1:
        raise Invalid("not a quicdesign-table 1.1+ manifest")
    if zeroed_manifest_digest(raw) != manifest["manifest_bytes_sha256"]:
        raise Invalid("manifest_bytes_sha256 mismatch")
    params = manifest["parameters"]
    bits, shared_bits = params["bits"], params["shared_bits"]
    exact = {name: float.fromhex(params["exact"][name]) for name in ("tail_prob", "lower", "upper")}
    for name, value in exact.items():
        if value != params[name] or not math.isfinite(value):
            raise Invalid("parameters." + name + " differs from its hex spelling")
    arrays = {}
    for name in ("receiver", "code_model"):
        entry = manifest["arrays"].get(name)
        if entry is None:
            continue
        if entry["dtype"] != "<f8" or entry["shape"] != [2**shared_bits, 2**bits]:
            raise Invalid(name + ": unexpected dtype or shape")
        if "/" in entry["file"] or "\\" in entry["file"] or entry["file"].startswith("."):
            raise Invalid(name + ": file is not a plain name")
        data = (folder / entry["file"]).read_bytes()
        if len(data) != 8 * 2**shared_bits * 2**bits:
            raise Invalid(name + ": wrong size")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise Invalid(name + ": sha256 mismatch")
        arrays[name] = data
    head = b"qdtable1" + struct.pack(
        "<BBddd", bits, shared_bits, exact["tail_prob"], exact["lower"], exact["upper"]
    )
    body = arrays["receiver"]
    if "code_model" in arrays:
        body += b"code_model" + arrays["code_model"]
    if hashlib.sha256(head + body).hexdigest()[:16] != manifest["fingerprint"]:
        raise Invalid("fingerprint mismatch")
    return manifest["fingerprint"]


def verify_collection(folder):
    index = json.loads((folder / "index.json").read_bytes())
    if index["format"]["name"] != "quicdesign-table-index" or index["format"]["major"] != 1:
        raise Invalid("not a quicdesign-table-index 1.x")
    results = []
    for entry in index["tables"]:
        directory = entry["directory"]
        if "/" in directory or "\\" in directory or directory in (".", ".."):
            raise Invalid("bad directory " + directory)
        results.append((directory, verify_table(folder / directory, entry["manifest_sha256"])))
    return results


def main(argv):
    status = 0
    for folder in argv:
        try:
            for directory, fingerprint in verify_collection(Path(folder)):
                print(f"ok {folder}/{directory} {fingerprint}")
        except (Invalid, OSError, KeyError, TypeError, ValueError) as exc:
            print(f"FAILED {folder}: {exc!r}")
            status = 1
    if "quicdesign" in sys.modules:
        print("FAILED: quicdesign was imported")
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
