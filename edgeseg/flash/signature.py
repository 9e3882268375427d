"""Ed25519 signatures over a bundle's manifest.

The signature covers the exact bytes of ``manifest.json``; the manifest holds the sha256 and
size of every file, so one signature vouches for the whole bundle. It is stored beside the
manifest as ``manifest.json.sig``: one line, the 64-byte signature in base64.

Keys are PEM files (PKCS#8 private key, SubjectPublicKeyInfo public key), unencrypted: they are
made by ``edgeseg engines keygen`` and the private one stays on the signing workstation.

``cryptography`` is imported only when a signature is made or checked, so a device that never
configures a public key does not need it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from edgeseg.bundle.manifest import MANIFEST_NAME, link_refusal, read_manifest
from edgeseg.bundle.verify import integrity_problems
from edgeseg.errors import BundleError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_NAME: Final = MANIFEST_NAME + ".sig"
PRIVATE_KEY_NAME: Final = "edgeseg-signing.key.pem"
PUBLIC_KEY_NAME: Final = "edgeseg-signing.pub.pem"
_SIGNATURE_BYTES: Final = 64


def _crypto_missing() -> BundleError:
    return BundleError("bundle signatures need the 'cryptography' package: pip install cryptography")


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{what} {path}: not found") from None
    except OSError as exc:
        raise BundleError(f"{what} {path}: cannot read ({exc.strerror})") from None


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The ed25519 public key in a PEM file; BundleError when missing or of another kind."""
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError:
        raise _crypto_missing() from None
    p = Path(path)
    data = _read_key_file(p, "public key")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise BundleError(f"public key {p}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"public key {p}: a {type(key).__name__}, expected an ed25519 key")
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The ed25519 private key in an unencrypted PEM file."""
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError:
        raise _crypto_missing() from None
    p = Path(path)
    data = _read_key_file(p, "private key")
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise BundleError(f"private key {p}: encrypted keys are not supported") from None
    except ValueError:
        raise BundleError(f"private key {p}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"private key {p}: a {type(key).__name__}, expected an ed25519 key")
    return key


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key (sha256 of its raw bytes, 16 hex digits)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def generate_keypair(out_dir: str | Path) -> tuple[Path, Path]:
    """Write a new private key (mode 0600) and its public key into ``out_dir``; never overwrites."""
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
            PublicFormat,
        )
    except ImportError:
        raise _crypto_missing() from None
    d = Path(out_dir)
    private_path, public_path = d / PRIVATE_KEY_NAME, d / PUBLIC_KEY_NAME
    for p in (private_path, public_path):
        if p.exists():
            raise BundleError(f"{p}: already exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        raise BundleError(f"keys in {d}: cannot write ({exc.strerror})") from None
    return private_path, public_path


def sign_manifest(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The content of ``manifest.json.sig`` for these manifest bytes."""
    return base64.b64encode(key.sign(manifest_bytes)) + b"\n"


def sign_bundle(bundle_dir: str | Path, private_key: str | Path) -> Path:
    """Sign ``bundle_dir/manifest.json`` in place; refused when a file does not match the manifest."""
    d = Path(bundle_dir)
    key = load_private_key(private_key)
    from edgeseg.flash.store import linked_names  # lazy: the store imports this module

    try:
        manifest, manifest_bytes = read_manifest(d)  # the exact bytes signed, read as every command reads them
    except BundleError as exc:
        raise BundleError(f"bundle {d}: not signed: {exc}") from None
    links = linked_names(d, [e.file for e in manifest.engines] + list(manifest.extra_files))
    if links:  # a signature would vouch for whatever the link points to when the bundle is read
        raise BundleError(f"bundle {d}: not signed: {'; '.join(link_refusal(n) for n in links)}")
    problems = integrity_problems(d, manifest)
    if problems:
        raise BundleError(f"bundle {d}: not signed, its files do not match the manifest: {'; '.join(problems)}")
    sig_path = d / SIGNATURE_NAME
    tmp = sig_path.with_name(sig_path.name + ".tmp")
    try:
        tmp.write_bytes(sign_manifest(manifest_bytes, key))
        os.replace(tmp, sig_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BundleError(f"{sig_path}: cannot write ({exc.strerror})") from None
    return sig_path


def signature_problem(bundle_dir: str | Path, manifest_bytes: bytes, public_key: str | Path) -> str | None:
    """Why the bundle's signature does not vouch for ``manifest_bytes`` under ``public_key``, or None.

    BundleError (not a problem string) when the key itself is unusable: that is the device's
    configuration at fault, not the bundle.
    """
    key = load_public_key(public_key)
    from cryptography.exceptions import InvalidSignature

    sig_path = Path(bundle_dir) / SIGNATURE_NAME
    try:
        text = sig_path.read_bytes()
    except FileNotFoundError:
        return f"{SIGNATURE_NAME}: missing; the bundle is unsigned and a public key ({public_key}) is configured"
    except OSError as exc:
        return f"{SIGNATURE_NAME}: cannot read ({exc.strerror})"
    try:
        signature = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != _SIGNATURE_BYTES:
        return f"{SIGNATURE_NAME}: not an ed25519 signature (expected {_SIGNATURE_BYTES} bytes in base64)"
    try:
        key.verify(signature, manifest_bytes)
    except InvalidSignature:
        return (
            f"{SIGNATURE_NAME}: does not verify with public key {public_key} ({key_fingerprint(key)}): "
            "the manifest was changed after signing, or signed with another key"
        )
    return None
