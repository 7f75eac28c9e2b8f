"""TLS material: load the operator's certificate or make a self-signed one.

A development run gets a self-signed certificate in the state directory so
``twistd -n rendezvous`` works with no configuration (RFC 8489 §6.2.3 STUN
over TLS). Production deployments pass ``--cert`` and ``--key``.
"""

import datetime
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()


SELF_SIGNED_DAYS = 365
# RFC 7443 ALPN identifiers. Offering none makes OpenSSL answer a client's
# ALPN extension (coturn's clients send "stun.turn") with an internal error.
ALPN_PROTOCOLS = [b"stun.turn", b"stun.nat-discovery"]
# The HTTPS firewall port also serves browsers (WebSocket signaling).
WEB_ALPN_PROTOCOLS = ALPN_PROTOCOLS + [b"http/1.1"]
# Forward-secret suites that need no Diffie-Hellman parameter file: a client
# offering DHE first (coturn's turnutils do) must not meet an OpenSSL
# internal error for want of one. TLS 1.3 suites are always on.
_CIPHERS = ssl.AcceptableCiphers.fromOpenSSLCipherString(
    "ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES256:ECDHE+AES128"
)


def tls_options(cert: Path | None, key: Path | None, state_dir: Path,
                protocols: list[bytes] = ALPN_PROTOCOLS) -> ssl.CertificateOptions:
    """CertificateOptions for the operator's PEM files, or a self-signed pair.

    Raises ValueError with a readable message when the files cannot be used.
    """
    if cert is None:
        cert, key = self_signed(state_dir)
    try:
        pem = Path(cert).read_bytes() + b"\n" + Path(key).read_bytes()
        private = ssl.PrivateCertificate.loadPEM(pem)
        return ssl.CertificateOptions(
            privateKey=private.privateKey.original,
            certificate=private.original,
            acceptableCiphers=_CIPHERS,
            acceptableProtocols=protocols,
        )
    except Exception as e:  # OSError, or OpenSSL's own errors for bad PEM
        raise ValueError(f"cannot load TLS certificate {cert} / key {key}: {e}") from None


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """A server TLS connection creator whose certificate can be re-read (SIGHUP).

    New connections take the current certificate; connections already up
    keep the one they started with.
    """

    def __init__(self, cert: Path | None, key: Path | None, state_dir: Path,
                 protocols: list[bytes] = ALPN_PROTOCOLS) -> None:
        self._args = (cert, key, state_dir, protocols)
        self.options = tls_options(*self._args)

    def serverConnectionForTLS(self, protocol) -> SSL.Connection:
        return SSL.Connection(self.options.getContext(), None)

    def reload(self) -> None:
        """Re-read the files; raises ValueError (keeping the old certificate) if they are bad."""
        self.options = tls_options(*self._args)
        log.info("reloaded the TLS certificate")


def self_signed(state_dir: Path) -> tuple[Path, Path]:
    """Return (cert, key) paths in state_dir/tls, making them the first time."""
    directory = state_dir / "tls"
    cert_path, key_path = directory / "self-signed.pem", directory / "self-signed.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname())])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(socket.gethostname()), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("generated a self-signed certificate in {path}", path=str(cert_path))
    return cert_path, key_path
