"""Keys, CSRs and certificates made locally, and the PEM files that hold them.

Private keys are written 0600 inside a 0700 directory, atomically, and never printed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from elf_async.errors import UsageError

KeyType = Literal["rsa", "ec"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def generate_key(key_type: KeyType) -> PrivateKey:
    """RSA-2048 or EC P-256 (the two key types AWS IoT accepts for devices)."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_key_der(cert_pem: str) -> bytes:
    """DER of the public key of a certificate PEM: matches a certificate to its key."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def common_name(cert_pem: str) -> str | None:
    """The subject CN of a certificate: elf-async puts the thing name there."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def subject_text(cert_pem: str) -> str:
    """The whole subject of a certificate (RFC 4514), to find the fleet id that a CSR put there."""
    return x509.load_pem_x509_certificate(cert_pem.encode()).subject.rfc4514_string()


def own_public_key_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def make_csr(key: PrivateKey, common_name: str, *, unit: str | None = None) -> str:
    """A CSR for `common_name`; `unit` (OU) lets a stand-in that ignores the CSR's key still
    name the fleet in the certificate it returns."""
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if unit:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(attributes))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA that signs device (and, for the local stack, server) certificates."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def create(
        cls, common_name: str, *, key_type: KeyType = "ec", days: int = 3650
    ) -> CertificateAuthority:
        key = generate_key(key_type)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> CertificateAuthority:
        """Load a CA from PEM files; a missing or unreadable file is a usage error."""
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        except OSError as exc:
            raise UsageError(f"--ca-cert {cert_file}: {exc.strerror}") from exc
        except ValueError as exc:
            raise UsageError(f"--ca-cert {cert_file}: not a PEM certificate") from exc
        try:
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except OSError as exc:
            raise UsageError(f"--ca-key {key_file}: {exc.strerror}") from exc
        except (ValueError, TypeError) as exc:
            raise UsageError(f"--ca-key {key_file}: not an unencrypted PEM private key") from exc
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise UsageError(f"--ca-key {key_file}: only RSA and EC keys are supported")
        if own_public_key_der(key) != cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise UsageError(f"--ca-key {key_file} does not belong to --ca-cert {cert_file}")
        return cls(cert, key)

    def sign(
        self,
        public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
        common_name: str,
        *,
        server_names: tuple[str, ...] = (),
        days: int = 365,
    ) -> str:
        """Sign a client certificate (or, with `server_names`, a server certificate)."""
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if server_names:
            sans: list[x509.GeneralName] = []
            for host in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM).decode()


def load_private_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise UsageError(f"{path}: only RSA and EC keys are supported")
    return key


def thing_files(state_dir: Path, thing: str) -> tuple[Path, Path]:
    """Where a thing's private key and certificate live: ``<state-dir>/certs/<thing>.key|.crt``."""
    directory = state_dir / "certs"
    return directory / f"{thing}.key", directory / f"{thing}.crt"
