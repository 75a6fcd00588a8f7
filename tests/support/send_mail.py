#!/usr/bin/env python3
"""Send one message with smtplib and print the outcome as one JSON line.

System tests use it as an independent SMTP client for the TLS and AUTH modes
of smtp_server.py.  The output is {"sent": bool, "code": int or null,
"error": str or null}: code is the server's reply code that ended the attempt
(250 when sent), and error describes a failure.  The exit status is 0 whenever
the attempt ran, whether or not the server accepted the message, and 2 for
invalid arguments.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import ssl
import sys
from email.message import EmailMessage


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Send one test message and print the outcome as JSON.")
    parser.add_argument("--host", default="127.0.0.1", help="SMTP server address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="SMTP server port")
    parser.add_argument("--from", dest="sender", default="sender@example.test", help="envelope and header sender")
    parser.add_argument("--to", action="append", required=True, help="recipient; repeat for more than one")
    parser.add_argument("--subject", default="txnotify test message", help="Subject header")
    parser.add_argument("--message-id", help="Message-ID header, e.g. <id@example.test>")
    parser.add_argument("--starttls", action="store_true", help="run STARTTLS before sending")
    parser.add_argument("--implicit-tls", action="store_true", help="connect with TLS from the start")
    parser.add_argument("--cafile", help="PEM file of trusted certificates for TLS")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="log in with these credentials")
    parser.add_argument("--timeout", type=float, default=5.0, help="socket timeout in seconds (default: 5)")
    args = parser.parse_args(argv)
    if args.starttls and args.implicit_tls:
        parser.error("--starttls and --implicit-tls exclude each other")
    return args


def build_message(args: argparse.Namespace) -> EmailMessage:
    message = EmailMessage()
    message["From"] = args.sender
    message["To"] = ", ".join(args.to)
    message["Subject"] = args.subject
    if args.message_id:
        message["Message-ID"] = args.message_id
    message.set_content("Test message from tests/support/send_mail.py.\n")
    return message


def send(args: argparse.Namespace) -> dict:
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else ssl.create_default_context()
    # An explicit local_hostname keeps smtplib from resolving this host's name.
    options = {"host": args.host, "port": args.port, "local_hostname": "localhost", "timeout": args.timeout}
    if args.implicit_tls:
        client: smtplib.SMTP = smtplib.SMTP_SSL(context=context, **options)
    else:
        client = smtplib.SMTP(**options)
    with client:
        client.ehlo()
        if args.starttls:
            client.starttls(context=context)
            client.ehlo()
        if args.auth:
            user, _, password = args.auth.partition(":")
            client.login(user, password)
        refused = client.send_message(build_message(args), from_addr=args.sender, to_addrs=args.to)
    if refused:
        code = next(iter(refused.values()))[0]
        return {"sent": False, "code": code, "error": f"some recipients were refused: {refused}"}
    return {"sent": True, "code": 250, "error": None}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        outcome = send(args)
    except smtplib.SMTPResponseException as error:
        outcome = {"sent": False, "code": error.smtp_code, "error": str(error)}
    except smtplib.SMTPRecipientsRefused as error:
        code = next(iter(error.recipients.values()))[0]
        outcome = {"sent": False, "code": code, "error": str(error)}
    except (OSError, smtplib.SMTPException) as error:
        outcome = {"sent": False, "code": None, "error": f"{type(error).__name__}: {error}"}
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
