"""The server's certificate authority, its TLS certificate and the task-signing key.

On first start the server makes a CA (ECDSA P-256) under ``DATA_DIR/pki``; the CA signs the
server's own certificate (valid for its listen address and any extra names) and each agent's
client certificate at enrollment. Agents pin the CA by the SHA-256 of its DER encoding. Tasks are
signed with a separate Ed25519 key, so a leaked TLS key cannot order an agent to act.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CA_VALID_DAYS = 3650
LEAF_VALID_DAYS = 825


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, as lower-case hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Vigil"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Authority:
    """The loaded CA, server certificate paths and task-signing key of one data directory."""

    folder: Path
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    task_key: ed25519.Ed25519PrivateKey

    @property
    def ca_path(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_cert_path(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key_path(self) -> Path:
        return self.folder / "server.key"

    @property
    def ca_fingerprint(self) -> str:
        return fingerprint(self.ca_cert)

    def task_public_key_pem(self) -> str:
        return (
            self.task_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def issue_server_cert(self, hosts: list[str]) -> None:
        """(Re)issue the server certificate for these addresses and names."""
        key = ec.generate_private_key(ec.SECP256R1())
        alt_names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt_names.append(x509.DNSName(host))
        cert = (
            self._builder(_name(hosts[0]), key.public_key(), LEAF_VALID_DAYS)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        _write_private(self.server_key_path, _pem_key(key))
        self.server_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        log.info("issued server certificate for %s", ", ".join(hosts))

    def sign_client_csr(self, csr_pem: bytes, agent_id: str) -> bytes:
        """Sign an agent's CSR as a client certificate whose common name is the agent id."""
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise ValueError("the certificate request's signature does not verify")
        cert = (
            self._builder(_name(agent_id), csr.public_key(), LEAF_VALID_DAYS)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def _builder(
        self, subject: x509.Name, public_key: object, days: int
    ) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca_cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
        )


def load_or_create(folder: Path) -> Authority:
    """Load the authority kept in ``folder``, creating the CA and task key on first start."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = folder / "ca.crt", folder / "ca.key"
    task_key_path = folder / "task-signing.key"

    if not ca_cert_path.exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("Vigil CA"))
            .issuer_name(_name("Vigil CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
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
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(ca_key_path, _pem_key(ca_key))
        ca_cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        log.info("created certificate authority in %s", folder)
    if not task_key_path.exists():
        _write_private(task_key_path, _pem_key(ed25519.Ed25519PrivateKey.generate()))

    ca_key_loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    task_key = serialization.load_pem_private_key(task_key_path.read_bytes(), None)
    assert isinstance(ca_key_loaded, ec.EllipticCurvePrivateKey)
    assert isinstance(task_key, ed25519.Ed25519PrivateKey)
    return Authority(
        folder=folder,
        ca_cert=x509.load_pem_x509_certificate(ca_cert_path.read_bytes()),
        ca_key=ca_key_loaded,
        task_key=task_key,
    )
