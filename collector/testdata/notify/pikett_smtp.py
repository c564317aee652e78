"""aiosmtpd handler for pikett's e-mail tests: a Maildir like aiosmtpd.handlers.Mailbox, plus
recipients that the server refuses: nobody@... gets 550 (permanent), busy@... gets 451
(transient).

Run: PYTHONPATH=testdata python3 -m aiosmtpd -n -l 127.0.0.1:PORT -c pikett_smtp.Recording DIR
"""

from aiosmtpd.handlers import Mailbox


class Recording(Mailbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        if address.startswith("busy@"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"
