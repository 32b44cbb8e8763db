"""The kernel audit netlink protocol: status, rules and the record stream.

Speaks ``NETLINK_AUDIT`` directly, so the agent needs neither auditd nor auditctl. The layouts
are those of ``include/uapi/linux/audit.h`` (``struct audit_status``) and
``include/uapi/linux/netlink.h`` (``struct nlmsghdr``, ``struct nlmsgerr``).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from vigil.agent.errors import AgentError

log = logging.getLogger(__name__)

NETLINK_AUDIT = 9
SO_RCVBUFFORCE = 33  # not exported by the socket module; asm-generic/socket.h

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300

AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_ADD_RULE = 1011
AUDIT_DEL_RULE = 1012
AUDIT_LIST_RULES = 1013
# Types from here on are records (1100-1199 user messages, 1300+ kernel events).
FIRST_RECORD_TYPE = 1100
AUDIT_REPLACE = 1329  # sent to test that the registered daemon is alive; not a record

AUDIT_STATUS_ENABLED = 0x01
AUDIT_STATUS_FAILURE = 0x02
AUDIT_STATUS_PID = 0x04
AUDIT_STATUS_BACKLOG_LIMIT = 0x10

AUDIT_FAIL_PANIC = 2
AUDIT_ENABLED_LOCKED = 2

_NLMSGHDR = struct.Struct("=IHHII")
_NLMSGERR = struct.Struct("=i")
# mask enabled failure pid rate_limit backlog_limit lost backlog feature_bitmap
# backlog_wait_time; older kernels send a shorter struct, newer ones a longer one.
_STATUS = struct.Struct("=10I")
_RECV_SIZE = 1 << 16


class AuditNetlinkError(AgentError):
    """A request on the audit netlink socket failed; ``errno`` holds the kernel's error code."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.errno = code


@dataclass(frozen=True)
class AuditStatus:
    """The kernel's audit settings and counters (``struct audit_status``)."""

    enabled: int
    failure: int
    pid: int
    rate_limit: int
    backlog_limit: int
    lost: int
    backlog: int
    backlog_wait_time: int

    @classmethod
    def unpack(cls, payload: bytes) -> AuditStatus:
        """Decode a status payload, padding the fields an older kernel leaves out."""
        padded = payload[: _STATUS.size].ljust(_STATUS.size, b"\0")
        (_mask, enabled, failure, pid, rate, backlog_limit, lost, backlog, _features, wait) = (
            _STATUS.unpack(padded)
        )
        return cls(enabled, failure, pid, rate, backlog_limit, lost, backlog, wait)


@dataclass(frozen=True)
class NetlinkMessage:
    """One netlink message: its type (an audit record type for records), sequence and body."""

    type: int
    flags: int
    seq: int
    payload: bytes


def parse_messages(data: bytes) -> Iterator[NetlinkMessage]:
    """Split one datagram into its netlink messages.

    The kernel sends each audit record in its own datagram and sets its ``nlmsg_len`` to the
    payload length alone, without the header, so a record takes the rest of the datagram.
    """
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, mtype, flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if mtype >= FIRST_RECORD_TYPE or length < _NLMSGHDR.size:
            end = len(data)
        else:
            end = min(offset + length, len(data))
        yield NetlinkMessage(mtype, flags, seq, data[offset + _NLMSGHDR.size : end])
        offset = (end + 3) & ~3


def ack_error(payload: bytes) -> int:
    """The (positive) errno carried by an ``NLMSG_ERROR`` message; 0 is a plain acknowledgement."""
    (code,) = _NLMSGERR.unpack_from(payload)
    return -int(code)


class AuditSocket:
    """A ``NETLINK_AUDIT`` socket with request/acknowledge helpers.

    Not thread-safe: a request reads replies off the socket, so two threads sharing one socket
    can take each other's answers. Callers that share one must serialise requests.

    Args:
        rcvbuf: Receive buffer size in bytes; set with ``SO_RCVBUFFORCE`` (root) and, failing
            that, ``SO_RCVBUF``. ``None`` keeps the system default.
        timeout: Seconds to wait for the kernel's answer to a request.
    """

    def __init__(self, rcvbuf: int | None = None, timeout: float = 5.0) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        except OSError as exc:
            raise AuditNetlinkError(
                f"cannot open the kernel audit netlink socket: {exc.strerror}; the kernel needs "
                "CONFIG_AUDIT and the agent needs CAP_AUDIT_CONTROL (run it as root)",
                exc.errno or 0,
            ) from exc
        self.sock.bind((0, 0))
        self.sock.settimeout(timeout)
        if rcvbuf:
            self._set_rcvbuf(rcvbuf)
        self._seq = itertools.count(1)
        self._pending_error: OSError | None = None

    def _set_rcvbuf(self, size: int) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except OSError:
            log.debug("SO_RCVBUFFORCE refused, falling back to SO_RCVBUF", exc_info=True)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    @property
    def rcvbuf(self) -> int:
        """The receive buffer size the kernel granted (it doubles the requested value)."""
        return int(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def close(self) -> None:
        """Close the socket; safe to call twice."""
        self.sock.close()

    def fileno(self) -> int:
        """The socket's descriptor, for ``select``."""
        return self.sock.fileno()

    def send(self, mtype: int, payload: bytes, flags: int = NLM_F_REQUEST | NLM_F_ACK) -> int:
        """Send one request to the kernel and return its sequence number."""
        seq = next(self._seq)
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), mtype, flags, seq, 0)
        self.sock.sendto(header + payload, (0, 0))
        return seq

    def receive(self) -> list[NetlinkMessage]:
        """Read one datagram (blocking up to the socket timeout) and split it.

        Raises:
            TimeoutError: Nothing arrived within the socket timeout.
        """
        return list(parse_messages(self.sock.recv(_RECV_SIZE)))

    def receive_many(self, limit: int) -> list[NetlinkMessage]:
        """Read every datagram already queued (up to ``limit``), waiting only when none is.

        The kernel sends one record per datagram, so reading what is queued in one go saves
        a wait (``poll``) per record under load. An overflow (``ENOBUFS``) met after some
        datagrams were read is raised by the next call, so nothing read is lost.

        Raises:
            TimeoutError: Nothing arrived within the socket timeout.
            OSError: The socket failed (``ENOBUFS``: the receive buffer overflowed).
        """
        pending, self._pending_error = self._pending_error, None
        if pending is not None:
            raise pending
        fd = self.sock.fileno()
        # A socket with a timeout is non-blocking underneath: os.read never waits on it.
        nonblocking = self.sock.gettimeout() is not None
        messages: list[NetlinkMessage] = []
        datagrams = 0
        while datagrams < limit:
            try:
                data = os.read(fd, _RECV_SIZE) if nonblocking else b""
            except BlockingIOError:
                data = b""
            except OSError as exc:
                if not datagrams:
                    raise
                self._pending_error = exc
                break
            if not data:
                if datagrams:
                    break
                data = self.sock.recv(_RECV_SIZE)  # wait, up to the socket timeout
            datagrams += 1
            messages.extend(parse_messages(data))
        return messages

    def _reply(self, what: str) -> list[NetlinkMessage]:
        try:
            return self.receive()
        except TimeoutError:
            raise AuditNetlinkError(
                f"kernel audit did not answer a request to {what} within "
                f"{self.sock.gettimeout()} s; is another thread reading this socket?"
            ) from None

    def request(self, mtype: int, payload: bytes, what: str) -> list[NetlinkMessage]:
        """Send a request and collect its replies up to the acknowledgement or ``NLMSG_DONE``.

        Messages that belong to no request (audit records, when this socket is the audit
        daemon's) are not expected here and are dropped with a debug line.

        Raises:
            AuditNetlinkError: The kernel refused the request; the message names ``what``.
        """
        seq = self.send(mtype, payload)
        replies: list[NetlinkMessage] = []
        while True:
            for message in self._reply(what):
                if message.seq != seq:
                    log.debug("ignoring netlink message type %d seq %d", message.type, message.seq)
                    continue
                if message.type == NLMSG_ERROR:
                    code = ack_error(message.payload)
                    if code:
                        raise AuditNetlinkError(
                            f"kernel audit refused to {what}: {os.strerror(code)} (errno {code})",
                            code,
                        )
                    return replies
                if message.type == NLMSG_DONE:
                    return replies
                replies.append(message)

    def get_status(self) -> AuditStatus:
        """Read the kernel's audit status (``AUDIT_GET``)."""
        # Without NLM_F_ACK the status reply is the only answer; an error still comes back.
        seq = self.send(AUDIT_GET, b"", NLM_F_REQUEST)
        while True:
            for message in self._reply("report its status"):
                if message.seq != seq:
                    continue
                if message.type == AUDIT_GET:
                    return AuditStatus.unpack(message.payload)
                if message.type == NLMSG_ERROR and ack_error(message.payload):
                    code = ack_error(message.payload)
                    raise AuditNetlinkError(
                        f"kernel audit refused to report its status: {os.strerror(code)}", code
                    )

    def set_status(self, mask: int, **values: int) -> None:
        """Change the settings named by ``mask`` (``AUDIT_SET``).

        Raises:
            AuditNetlinkError: The kernel refused, or the change would set panic mode.
        """
        if mask & AUDIT_STATUS_FAILURE and values.get("failure") == AUDIT_FAIL_PANIC:
            raise AuditNetlinkError("refusing to set the audit failure mode to panic")
        fields = [
            mask,
            values.get("enabled", 0),
            values.get("failure", 0),
            values.get("pid", 0),
            0,
            values.get("backlog_limit", 0),
            0,
            0,
            0,
            0,
        ]
        names = ", ".join(f"{name}={value}" for name, value in sorted(values.items()))
        self.request(AUDIT_SET, _STATUS.pack(*fields), f"set {names}")

    def add_rule(self, rule_data: bytes) -> None:
        """Add one rule (``AUDIT_ADD_RULE`` with a packed ``struct audit_rule_data``)."""
        self.request(AUDIT_ADD_RULE, rule_data, "add an audit rule")

    def delete_rule(self, rule_data: bytes) -> None:
        """Delete one rule, given exactly as it was added or listed."""
        self.request(AUDIT_DEL_RULE, rule_data, "delete an audit rule")

    def list_rules(self) -> list[bytes]:
        """Every loaded audit rule as a packed ``struct audit_rule_data``."""
        seq = self.send(AUDIT_LIST_RULES, b"", NLM_F_REQUEST | NLM_F_ACK)
        rules: list[bytes] = []
        while True:
            for message in self._reply("list rules"):
                if message.seq != seq:
                    continue
                if message.type == AUDIT_LIST_RULES:
                    rules.append(message.payload)
                elif message.type == NLMSG_DONE:
                    return rules
                elif message.type == NLMSG_ERROR:
                    code = ack_error(message.payload)
                    if code:
                        raise AuditNetlinkError(
                            f"kernel audit refused to list rules: {os.strerror(code)}", code
                        )


def is_enobufs(exc: OSError) -> bool:
    """True when a receive failed because the socket buffer overflowed (records were lost)."""
    return exc.errno == errno.ENOBUFS
