"""A user's identity: a key pair and a self-signed certificate in a key file, made on first use.

The session layer authenticates peers by certificate fingerprint, as WebRTC
does with SDP's ``a=fingerprint`` (RFC 8122 §5): the SHA-256 of the
certificate's DER bytes, written ``sha-256 AB:CD:...``. The fingerprint
travels to the peer through the node with the ICE candidates; the private
key never leaves this file (mode 0600), so a node can introduce peers but
cannot impersonate them.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERTIFICATE_DAYS = 20 * 365


class IdentityError(Exception):
    """The key file cannot be read, written or understood."""


def fingerprint(certificate: x509.Certificate) -> str:
    """RFC 8122 §5: ``sha-256`` and the upper-case hex of the DER certificate's digest."""
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return "sha-256 " + ":".join(digest[i:i + 2] for i in range(0, 64, 2))


@dataclass(frozen=True)
class Identity:
    """A private key and its certificate; ``fingerprint`` is what peers pin."""

    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    @classmethod
    def generate(cls, name: str) -> Identity:
        """A fresh P-256 key and a long-lived self-signed certificate naming ``name``."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64] or "txrendezvous")])
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @classmethod
    def load_or_create(cls, path: Path, name: str) -> Identity:
        """The identity in ``path`` (key then certificate, PEM); made and saved (0600) when missing.

        Raises IdentityError when the file exists but is not a key and its certificate."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            identity = cls.generate(name)
            identity.save(path)
            return identity
        except OSError as e:
            raise IdentityError(f"cannot read the key file {path}: {e.strerror}") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
            certificate = x509.load_pem_x509_certificate(data[data.index(b"-----BEGIN CERTIFICATE-----"):])
        except (ValueError, TypeError) as e:
            raise IdentityError(f"{path} is not a PEM private key followed by its certificate: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != certificate.public_key():
            raise IdentityError(f"{path}: the certificate is not the key's")
        return cls(key, certificate)

    def save(self, path: Path) -> None:
        """Write key and certificate to ``path`` atomically, readable by the owner only."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
        pem += self.certificate.public_bytes(serialization.Encoding.PEM)
        temporary = path.with_name(path.name + ".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as f:
            f.write(pem)
        os.replace(temporary, path)
