"""The local stack's certificates: one CA, and certificates it signs for the services on
loopback (names 127.0.0.1 and localhost: librdkafka verifies the broker's host name) and for
clients that authenticate with one, and the key that signs the stack's OAUTHBEARER tokens. Made
once, at the first ``make up``; private keys 0600."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
from pathlib import Path

from .config import private_dir, write_private

DAYS = 825  # the longest validity clients accept for a server certificate
TOKEN_KEY_ID = "enrollment-local-1"  # the ``kid`` of the OAUTHBEARER signing key


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> str:
    from cryptography.hazmat.primitives import serialization

    # PKCS#8, unencrypted: what Kafka's PEM key store reads without a key password (file 0600).
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _pem_cert(cert) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _certificate(subject: str, key, issuer: str, signer, *, ca: bool, server: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                if server
                else [ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


class LocalCA:
    """The stack's CA in ``folder``: ``ca.pem`` (the certificate clients trust), ``ca.key``."""

    def __init__(self, folder: Path, name: str = "enrollment local stack CA") -> None:
        self.folder, self.name = folder, name

    @property
    def certificate(self) -> Path:
        return self.folder / "ca.pem"

    def ensure(self) -> None:
        if self.certificate.exists() and (self.folder / "ca.key").exists():
            return
        private_dir(self.folder)
        key = _key()
        cert = _certificate(self.name, key, self.name, key, ca=True, server=False)
        write_private(self.folder / "ca.key", _pem_key(key))
        self.certificate.write_text(_pem_cert(cert))

    def issue(self, name: str, *, server: bool) -> Path:
        """``<name>.pem`` (0600): the private key, then the certificate and the CA's; made once.
        ``server``: named 127.0.0.1 and localhost, for server and client authentication."""
        from cryptography.hazmat.primitives import serialization

        self.ensure()
        bundle = self.folder / f"{name}.pem"
        if bundle.exists():
            return bundle
        ca_key = serialization.load_pem_private_key((self.folder / "ca.key").read_bytes(), None)
        key = _key()
        cert = _certificate(name, key, self.name, ca_key, ca=False, server=server)
        write_private(bundle, _pem_key(key) + _pem_cert(cert) + self.certificate.read_text())
        return bundle

    def token_signer(self) -> tuple[Path, Path]:
        """The key that signs OAUTHBEARER tokens (``token-signer.key``, PKCS#8, 0600; algorithm
        ES256, ``kid`` TOKEN_KEY_ID) and the JWKS a broker checks them with
        (``token-jwks.json``, public); made once."""
        key_file, jwks = self.folder / "token-signer.key", self.folder / "token-jwks.json"
        if key_file.exists() and jwks.exists():
            return key_file, jwks
        private_dir(self.folder)
        key = _key()
        numbers = key.public_key().public_numbers()

        def b64(n: int) -> str:
            return base64.urlsafe_b64encode(n.to_bytes(32, "big")).decode().rstrip("=")

        public = {"kty": "EC", "crv": "P-256", "x": b64(numbers.x), "y": b64(numbers.y)}
        write_private(key_file, _pem_key(key))
        jwks.write_text(
            json.dumps({"keys": [public | {"kid": TOKEN_KEY_ID, "use": "sig", "alg": "ES256"}]})
        )
        return key_file, jwks
