#!/usr/bin/env python3
"""Run an SMTP server for system tests that records mail and injects faults.

The protocol side is aiosmtpd's; this script adds a record file, fault rules
per recipient, a ready file and optional STARTTLS, implicit TLS and AUTH.

Record file (--record): one JSON object per line, appended when the server has
received a whole message.  Its fields:

  status       "accepted", or "stalled" or "dropped" when a rule withheld
               the final reply
  received_at  RFC 3339 time in UTC
  peer         client address as "host:port"
  mail_from, rcpt_tos
  message_id, subject
               header values, or null when the header is missing
  queue_id     id sent in the 250 reply, or null unless accepted
  tls, auth_user
  raw          the message as text, undecodable bytes replaced by U+FFFD

Rules file (--rules): a JSON list of rules, or an object {"rules": [...]}.
Each rule is an object with these keys:

  recipient  exact address or fnmatch glob such as "*@bounce.test";
             both match without regard to case.
  action     a reply code from 400 to 599 (string or integer, e.g. "451"),
             "stall-after-data" or "drop".
  stage      "rcpt" (the default) rejects or drops at RCPT TO; "data" does it
             after the message content has been received.
             "stall-after-data" always acts at the data stage.
  times      optional positive integer: the rule applies to the first N
             attempts for each matching recipient, then the recipient is
             handled as if the rule were absent.  Without it the rule
             always applies.
  message    optional reply text for a reply code.

For each recipient, the first rule that matches the address and stage and
still has attempts left decides.  At the data stage the first recipient, in
RCPT order, with such a rule decides for the whole message, because SMTP has
one DATA reply per message.  "stall-after-data" receives the content and then
never replies, so the connection stays open until the client gives up, the
idle timeout (--idle-timeout) passes or the server stops.  "drop" closes the
connection without a reply.

The server re-reads the rules file when its inode, modification time or size
changes: before every RCPT and DATA command and every 0.1 s.  A reload resets
the attempt counts.  After each load it writes FILE.status as JSON
{"signature", "rules", "error"} so a caller can wait until its new rules are
in effect.  An invalid rules file is rejected at startup; at a reload it is
reported in the status file and the log, and the previous rules stay.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import email
import email.policy
import fnmatch
import json
import logging
import os
import signal
import ssl
import sys
import uuid
import warnings
from typing import Any, Optional

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

LOG = logging.getLogger("smtp_server")

STAGES = ("rcpt", "data")
RULE_KEYS = {"recipient", "action", "stage", "times", "message"}
RULES_POLL_SECONDS = 0.1


@dataclasses.dataclass(frozen=True)
class Rule:
    """Fault rule for recipients that match one pattern."""

    pattern: str
    action: str  # "reply", "stall-after-data" or "drop"
    stage: str
    times: Optional[int]
    code: Optional[int] = None
    message: str = ""

    def matches(self, recipient: str) -> bool:
        return fnmatch.fnmatchcase(recipient.lower(), self.pattern)

    def reply(self) -> str:
        return f"{self.code} {self.message}"


def default_message(code: int) -> str:
    if code < 500:
        return "4.3.0 Temporary failure injected by the test SMTP server"
    return "5.1.1 Permanent failure injected by the test SMTP server"


def parse_rule(index: int, raw: Any) -> Rule:
    """Validate one rule object and convert it to a Rule.  Raises ValueError if it is invalid."""
    where = f"rule {index}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object, got {raw!r}")
    unknown = set(raw) - RULE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}, allowed keys are {sorted(RULE_KEYS)}")

    recipient = raw.get("recipient")
    if not isinstance(recipient, str) or not recipient:
        raise ValueError(f"{where}: 'recipient' must be a non-empty string, got {recipient!r}")

    times = raw.get("times")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise ValueError(f"{where}: 'times' must be a positive integer, got {times!r}")

    stage = raw.get("stage", "rcpt")
    if stage not in STAGES:
        raise ValueError(f"{where}: 'stage' must be one of {list(STAGES)}, got {stage!r}")

    message = raw.get("message")
    if message is not None and (not isinstance(message, str) or "\r" in message or "\n" in message):
        raise ValueError(f"{where}: 'message' must be a single-line string, got {message!r}")

    action = raw.get("action")
    pattern = recipient.lower()
    if action == "stall-after-data":
        if "stage" in raw and stage != "data":
            raise ValueError(f"{where}: 'stall-after-data' acts at the data stage, so 'stage' must be 'data' or absent")
        return Rule(pattern, "stall-after-data", "data", times)
    if action == "drop":
        return Rule(pattern, "drop", stage, times)

    code = action
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
        raise ValueError(
            f"{where}: 'action' must be a reply code from 400 to 599, 'stall-after-data' or 'drop', got {action!r}"
        )
    return Rule(pattern, "reply", stage, times, code, message or default_message(code))


def parse_rules(document: Any) -> list[Rule]:
    """Validate a rules document, a list or {"rules": [...]}.  Raises ValueError if it is invalid."""
    if isinstance(document, dict):
        if set(document) != {"rules"}:
            raise ValueError(f"a rules object must have exactly one key, 'rules', got {sorted(document)}")
        document = document["rules"]
    if not isinstance(document, list):
        raise ValueError(f"rules must be a JSON list or an object with a 'rules' list, got {type(document).__name__}")
    return [parse_rule(index, raw) for index, raw in enumerate(document)]


class RuleBook:
    """Fault rules loaded from a file, reloaded when the file changes, with attempt counts."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self.rules: list[Rule] = []
        self.signature: Optional[str] = None
        # (rule index, lower-case recipient) -> attempts the rule has acted on.
        self.attempts: dict[tuple[int, str], int] = {}

    def file_signature(self) -> Optional[str]:
        assert self.path is not None
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}"

    def load_initial(self) -> None:
        """Load the rules at startup.  Raises ValueError or OSError if the file is invalid or unreadable."""
        if self.path is None:
            return
        signature = self.file_signature()
        if signature is None:
            LOG.info("Rules file %s does not exist yet, so no faults are injected.", self.path)
        else:
            try:
                self.rules = self.read_rules()
            except ValueError as error:
                raise ValueError(f"invalid rules in {self.path}: {error}") from error
            LOG.info("Loaded %d rules from %s.", len(self.rules), self.path)
        self.signature = signature
        self.write_status(None)

    def refresh(self) -> None:
        """Reload the rules if the file changed, but keep the old rules if the new file is invalid."""
        if self.path is None:
            return
        signature = self.file_signature()
        if signature == self.signature:
            return
        self.signature = signature
        if signature is None:
            self.rules = []
            self.attempts.clear()
            LOG.info("Rules file %s was removed, so no faults are injected.", self.path)
            self.write_status(None)
            return
        try:
            rules = self.read_rules()
        except (OSError, ValueError) as error:
            LOG.error("Rejected the new rules in %s and kept the previous ones: %s", self.path, error)
            self.write_status(str(error))
            return
        self.rules = rules
        self.attempts.clear()
        LOG.info("Reloaded %d rules from %s and reset the attempt counts.", len(rules), self.path)
        self.write_status(None)

    def read_rules(self) -> list[Rule]:
        assert self.path is not None
        with open(self.path, encoding="utf-8") as file:
            try:
                document = json.load(file)
            except json.JSONDecodeError as error:
                raise ValueError(f"invalid JSON: {error}") from error
        return parse_rules(document)

    def write_status(self, error: Optional[str]) -> None:
        assert self.path is not None
        status = {"signature": self.signature, "rules": len(self.rules), "error": error}
        write_atomically(self.path + ".status", json.dumps(status) + "\n")

    def take(self, recipient: str, stage: str) -> Optional[Rule]:
        """Return the rule that acts on this attempt for the recipient, and count the attempt."""
        self.refresh()
        key_recipient = recipient.lower()
        for index, rule in enumerate(self.rules):
            if rule.stage != stage or not rule.matches(key_recipient):
                continue
            used = self.attempts.get((index, key_recipient), 0)
            if rule.times is not None and used >= rule.times:
                continue
            self.attempts[(index, key_recipient)] = used + 1
            return rule
        return None


def write_atomically(path: str, text: str) -> None:
    """Write a file through a rename, so readers never see it half written."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)


def format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def header_or_none(message: email.message.Message, name: str) -> Optional[str]:
    try:
        value = message.get(name)
    except Exception as error:  # a malformed header must not lose the record
        LOG.warning("Could not parse the %s header: %s", name, error)
        return None
    return None if value is None else str(value).strip()


class Recorder:
    """Appends one JSON line per received message to the record file."""

    def __init__(self, path: Optional[str]):
        self.path = path

    def record(self, status: str, session: Session, envelope: Envelope, queue_id: Optional[str]) -> None:
        content = envelope.original_content or b""
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        entry = {
            "status": status,
            "received_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "peer": format_peer(session.peer),
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "message_id": header_or_none(parsed, "Message-ID"),
            "subject": header_or_none(parsed, "Subject"),
            "queue_id": queue_id,
            "tls": getattr(session, "tls", False),
            "auth_user": session.auth_data if session.authenticated else None,
            "raw": content.decode("utf-8", errors="replace"),
        }
        if self.path is not None:
            # One write per line in append mode, so a reader sees whole lines
            # plus at most one partial line at the end.
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(json.dumps(entry) + "\n")
        LOG.info(
            "Recorded a message with status %s from %s: message_id=%s queue_id=%s recipients=%d",
            status,
            entry["peer"],
            entry["message_id"],
            queue_id,
            len(envelope.rcpt_tos),
        )


async def wait_forever() -> None:
    """Block until cancelled; aiosmtpd cancels the handler when the connection is lost."""
    await asyncio.get_running_loop().create_future()


class FaultInjectingHandler:
    """aiosmtpd handler that applies the fault rules and records received mail."""

    def __init__(self, rules: RuleBook, recorder: Recorder):
        self.rules = rules
        self.recorder = recorder

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        rule = self.rules.take(address, "rcpt")
        if rule is None:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            return "250 2.1.5 OK"

        peer = format_peer(session.peer)
        if rule.action == "drop":
            LOG.info("Dropping the connection from %s at RCPT TO:<%s> (rule %r).", peer, address, rule.pattern)
            server.transport.abort()
            await wait_forever()
        LOG.info("Replying %d to RCPT TO:<%s> from %s (rule %r).", rule.code, address, peer, rule.pattern)
        return rule.reply()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        session.tls = server.transport.get_extra_info("ssl_object") is not None
        peer = format_peer(session.peer)
        decisions = [(recipient, self.rules.take(recipient, "data")) for recipient in envelope.rcpt_tos]
        recipient, rule = next(((r, rule) for r, rule in decisions if rule is not None), (None, None))

        if rule is None:
            queue_id = uuid.uuid4().hex[:12].upper()
            self.recorder.record("accepted", session, envelope, queue_id)
            return f"250 2.0.0 OK: queued as {queue_id}"

        if rule.action == "stall-after-data":
            LOG.info("Stalling after DATA from %s for <%s> (rule %r).", peer, recipient, rule.pattern)
            self.recorder.record("stalled", session, envelope, None)
            await wait_forever()
        if rule.action == "drop":
            LOG.info("Dropping the connection from %s after DATA for <%s> (rule %r).", peer, recipient, rule.pattern)
            self.recorder.record("dropped", session, envelope, None)
            server.transport.abort()
            await wait_forever()
        LOG.info("Replying %d after DATA from %s for <%s> (rule %r).", rule.code, peer, recipient, rule.pattern)
        return rule.reply()


class TrackedSMTP(SMTP):
    """aiosmtpd SMTP protocol that registers its connection so shutdown can close it."""

    def __init__(self, handler: Any, connections: set["TrackedSMTP"], **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.connections = connections
        self.socket_transport: Optional[asyncio.BaseTransport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # STARTTLS calls this again with the TLS transport, so keep the first
        # transport, which owns the socket.
        if self.socket_transport is None:
            self.socket_transport = transport
            self.connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Optional[Exception]) -> None:
        self.connections.discard(self)
        super().connection_lost(error)


def parse_credentials(value: str) -> tuple[str, str]:
    user, separator, password = value.partition(":")
    if not separator or not user:
        raise argparse.ArgumentTypeError(f"expected USER:PASSWORD, got {value!r}")
    return user, password


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="SMTP server for system tests: records received mail and injects faults per recipient.",
        epilog="The module docstring describes the record and rules formats.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port to listen on, or 0 to pick a free port (default: 0)")
    parser.add_argument("--record", help="append one JSON line per received message to this file")
    parser.add_argument("--rules", help="JSON fault rules, reloaded when the file changes")
    parser.add_argument("--ready-file", help="write the bound port to this file once the server accepts connections")
    parser.add_argument("--tls-cert", help="PEM certificate chain, which enables STARTTLS, or implicit TLS with --implicit-tls")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument("--implicit-tls", action="store_true", help="start TLS on connect instead of offering STARTTLS")
    parser.add_argument(
        "--require-starttls", action="store_true", help="reject mail commands until the client has run STARTTLS"
    )
    parser.add_argument(
        "--auth",
        type=parse_credentials,
        metavar="USER:PASSWORD",
        help="require AUTH PLAIN or LOGIN with these credentials (with STARTTLS, AUTH is offered only after it)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        help="seconds without a client command before the server closes the connection (default: 300)",
    )
    parser.add_argument("--hostname", default="localhost", help="name sent in the greeting and EHLO reply")
    args = parser.parse_args(argv)

    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key must be given together")
    if args.implicit_tls and args.tls_cert is None:
        parser.error("--implicit-tls needs --tls-cert and --tls-key")
    if args.require_starttls and (args.tls_cert is None or args.implicit_tls):
        parser.error("--require-starttls needs --tls-cert and --tls-key, without --implicit-tls")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, got {args.port}")
    return args


def make_authenticator(user: str, password: str):
    expected = (user.encode(), password.encode())

    def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
        if isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == expected:
            return AuthResult(success=True, auth_data=user)
        LOG.warning("Rejected AUTH %s from %s: wrong user name or password.", mechanism, format_peer(session.peer))
        return AuthResult(success=False, handled=False)

    return authenticate


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    rules = RuleBook(args.rules)
    rules.load_initial()
    handler = FaultInjectingHandler(rules, Recorder(args.record))

    tls_context = None
    if args.tls_cert is not None:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.tls_cert, args.tls_key)

    smtp_options: dict[str, Any] = {
        "hostname": args.hostname,
        "timeout": args.idle_timeout,
        "loop": loop,
        "tls_context": None if args.implicit_tls else tls_context,
        "require_starttls": args.require_starttls,
    }
    if args.auth is not None:
        smtp_options["auth_required"] = True
        smtp_options["authenticator"] = make_authenticator(*args.auth)
        # aiosmtpd only counts STARTTLS as TLS, so with implicit TLS or no
        # TLS at all, AUTH must be allowed without it.
        smtp_options["auth_require_tls"] = tls_context is not None and not args.implicit_tls

    connections: set[TrackedSMTP] = set()
    server = await loop.create_server(
        lambda: TrackedSMTP(handler, connections, **smtp_options),
        host=args.host,
        port=args.port,
        ssl=tls_context if args.implicit_tls else None,
    )
    port = server.sockets[0].getsockname()[1]
    mode = "implicit TLS" if args.implicit_tls else ("STARTTLS" if tls_context else "plain")
    LOG.info(
        "Listening on %s:%d (%s, AUTH %s, pid %d).",
        args.host,
        port,
        mode,
        "required" if args.auth else "off",
        os.getpid(),
    )
    if args.ready_file:
        write_atomically(args.ready_file, f"{port}\n")

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def poll_rules() -> None:
        while True:
            rules.refresh()
            await asyncio.sleep(RULES_POLL_SECONDS)

    poller = asyncio.create_task(poll_rules())
    await stop.wait()

    LOG.info("Stopping: closing the listener and %d open connections.", len(connections))
    poller.cancel()
    server.close()
    for connection in list(connections):
        if connection.socket_transport is not None:
            connection.socket_transport.abort()
    await server.wait_closed()
    # Let the aborted connections run their connection_lost callbacks.
    await asyncio.sleep(0.05)
    LOG.info("Stopped.")


# aiosmtpd 1.4.6 warnings that AUTH without STARTTLS causes (wanted for plain
# and implicit-TLS test servers) and that its own AUTH code logs on every login.
EXPECTED_AIOSMTPD_WARNINGS = (
    "auth_required == True but auth_require_tls == False",
    "Session.login_data is deprecated",
)


def drop_expected_aiosmtpd_warnings(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(EXPECTED_AIOSMTPD_WARNINGS)


def main(argv: list[str]) -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiosmtpd logs every command and peer at INFO; its warnings and errors
    # are enough here, less the ones that this test setup triggers on purpose.
    aiosmtpd_log = logging.getLogger("mail.log")
    aiosmtpd_log.setLevel(logging.WARNING)
    aiosmtpd_log.addFilter(drop_expected_aiosmtpd_warnings)
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS", category=UserWarning)
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except (OSError, ValueError, ssl.SSLError) as error:
        LOG.error("The SMTP server failed: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
