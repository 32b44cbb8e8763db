"""The agent-server wire contract, in one place.

Every message between an agent and the server is one of these models. The server validates
each request against them, so a malformed batch is refused whole with a message that names the
offending field, and nothing of it is stored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_BATCH_EVENTS = 5000


class EnrollRequest(BaseModel):
    """An agent asks to join: the enrollment secret, its CSR and what it is."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=8, max_length=512)
    csr_pem: str = Field(max_length=16384)
    hostname: str = Field(min_length=1, max_length=255)
    host_id: str = Field(min_length=1, max_length=128)
    os: str = Field(default="linux", max_length=64)
    agent_version: str = Field(default="", max_length=64)


class EnrollResponse(BaseModel):
    """The agent's identity: its id, client certificate and the key that signs its tasks."""

    agent_id: str
    tenant_id: str
    cert_pem: str
    ca_pem: str
    task_public_key_pem: str


class EventBatch(BaseModel):
    """A batch of spooled events; ``spool_epoch`` with each event's ``event.sequence`` lets the
    server drop what it already committed when a batch is sent twice."""

    model_config = ConfigDict(extra="forbid")

    spool_epoch: str = Field(min_length=1, max_length=64)
    events: list[Any] = Field(max_length=MAX_BATCH_EVENTS)


class BatchAck(BaseModel):
    """What the server committed: the highest sequence now stored, and how many were new."""

    committed_sequence: int
    accepted: int
    duplicates: int


class Heartbeat(BaseModel):
    """Per-sensor health and counters, and the spool's state."""

    model_config = ConfigDict(extra="forbid")

    sensors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    spool: dict[str, int] = Field(default_factory=dict)
    isolated: bool = False
    # The exec guard of block_exec: state, blocked count, counters, marked scope.
    exec_block: dict[str, Any] = Field(default_factory=dict)
    watchdog: dict[str, Any] = Field(default_factory=dict)
    # Set on the last heartbeat of an agent that is shutting down on purpose.
    stopping: bool = False


class SignedTask(BaseModel):
    """A task as delivered: the canonical JSON of its body and the server's Ed25519 signature."""

    body: str
    signature: str


class TaskBody(BaseModel):
    """What the server asks an agent to do, and the facts the agent checks before it acts."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    tenant_id: str
    agent_id: str
    action: str
    params: dict[str, Any]
    nonce: str
    issued_at: float
    expires_at: float


class TaskResult(BaseModel):
    """What the agent did: ``done`` with a result, or ``failed`` with the reason."""

    model_config = ConfigDict(extra="forbid")

    status: str = Field(pattern="^(running|done|failed|rejected)$")
    result: dict[str, Any] = Field(default_factory=dict)
    message: str = Field(default="", max_length=8192)
