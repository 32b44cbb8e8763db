"""The agent's identity: enrollment against a server and the files it keeps in its state dir.

The server's CA is pinned by the SHA-256 fingerprint from the enrollment token (or the
``--ca-fingerprint`` flag): the agent fetches the CA certificate without trusting the
connection, checks the fingerprint, and only then sends its secret and CSR over a connection
verified against that CA.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import vigil
from vigil.agent.errors import AgentError
from vigil.schema.tokens import normalize_fingerprint, parse_enroll_token

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"


@dataclass
class Identity:
    """What an enrolled agent knows: who it is, its server, and the files of its credentials."""

    state_dir: Path
    agent_id: str
    tenant_id: str
    server_url: str
    host_id: str
    hostname: str

    @property
    def ca_path(self) -> Path:
        return self.state_dir / "ca.crt"

    @property
    def cert_path(self) -> Path:
        return self.state_dir / "agent.crt"

    @property
    def key_path(self) -> Path:
        return self.state_dir / "agent.key"

    @property
    def task_key_path(self) -> Path:
        return self.state_dir / "task-signing.pub"

    @property
    def server_host(self) -> str:
        return urlsplit(self.server_url).hostname or ""

    @property
    def server_port(self) -> int:
        return urlsplit(self.server_url).port or 443


def machine_id() -> str:
    """The host's stable id (systemd machine-id), or a hash of the hostname when it has none."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value:
            return value
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:32]


def load(state_dir: Path) -> Identity | None:
    """The identity saved in ``state_dir``, or None when the agent has not enrolled."""
    path = state_dir / IDENTITY_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return Identity(state_dir=state_dir, **data)


def fetch_pinned_ca(server_url: str, fingerprint: str) -> bytes:
    """Fetch the server's CA certificate and check it against the pinned fingerprint."""
    # Unverified on purpose: the fingerprint check below is what makes this CA trusted.
    with httpx.Client(verify=False, timeout=15) as client:  # noqa: S501
        try:
            response = client.get(f"{server_url}/api/v1/agent/ca.pem")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise AgentError(f"cannot fetch the CA from {server_url}: {exc}") from exc
    ca_pem = response.content
    cert = x509.load_pem_x509_certificate(ca_pem)
    actual = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    if actual != fingerprint:
        raise AgentError(
            f"the server at {server_url} presents CA {actual}, not the pinned {fingerprint}: "
            "check the server URL and the enrollment token"
        )
    return ca_pem


def enroll(
    state_dir: Path, server_url: str, token: str, ca_fingerprint: str | None = None
) -> Identity:
    """Enroll with a server and save the identity; raise AgentError saying what went wrong."""
    secret, token_fingerprint = parse_enroll_token(token)
    if not (ca_fingerprint or token_fingerprint):
        raise AgentError(
            "this enrollment token carries no CA fingerprint, so the server cannot be checked: "
            "pass the whole token 'vigil enroll-token create' printed (vgl1.SECRET.FINGERPRINT), "
            "or give --ca-fingerprint"
        )
    pinned = normalize_fingerprint(ca_fingerprint or token_fingerprint or "")
    server_url = server_url.rstrip("/")
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)

    ca_pem = fetch_pinned_ca(server_url, pinned)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vigil-agent")]))
        .sign(key, hashes.SHA256())
    )
    hostname = socket.gethostname()
    host_id = machine_id()

    with tempfile.NamedTemporaryFile(suffix=".pem") as ca_file:
        ca_file.write(ca_pem)
        ca_file.flush()
        context = ssl.create_default_context(cafile=ca_file.name)
        with httpx.Client(verify=context, timeout=30) as client:
            response = client.post(
                f"{server_url}/api/v1/agent/enroll",
                json={
                    "token": secret,
                    "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(),
                    "hostname": hostname,
                    "host_id": host_id,
                    "os": "linux",
                    "agent_version": vigil.__version__,
                },
            )
    if response.status_code != 200:
        try:
            reason = response.json()["detail"]
        except (ValueError, KeyError, TypeError):
            reason = response.text
        raise AgentError(f"enrollment refused ({response.status_code}): {reason}")
    answer = response.json()

    key_path = state_dir / "agent.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    (state_dir / "agent.crt").write_text(answer["cert_pem"])
    (state_dir / "ca.crt").write_bytes(ca_pem)
    (state_dir / "task-signing.pub").write_text(answer["task_public_key_pem"])
    identity = Identity(
        state_dir=state_dir,
        agent_id=answer["agent_id"],
        tenant_id=answer["tenant_id"],
        server_url=server_url,
        host_id=host_id,
        hostname=hostname,
    )
    data = {k: v for k, v in identity.__dict__.items() if k != "state_dir"}
    (state_dir / IDENTITY_FILE).write_text(json.dumps(data, indent=2) + "\n")
    log.info("enrolled as agent %s with %s", identity.agent_id, server_url)
    return identity
