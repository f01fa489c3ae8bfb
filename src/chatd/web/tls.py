"""TLS of chatd's own: the server's certificate, its modern defaults, reloading on SIGHUP.

With `server.certfile` and `server.keyfile` set, `web/front.py` speaks TLS on its one port:
HTTPS (HTTP/2 when the client offers it through ALPN) and WSS alike. The defaults are
Mozilla's "intermediate" profile: TLS 1.2 and 1.3 only, forward-secret AEAD ciphers only
(which is also what HTTP/2 requires of TLS 1.2), no renegotiation, no compression.

A certificate is replaced by writing the new files and sending the process SIGHUP
(`chatd serve` handles it): new connections get the new certificate, open ones keep the
one they started with. A reload that fails (a missing file, a key that does not match)
is logged and the current certificate stays: a renewal gone wrong must not take the
server down. `docs/deploy.md` has the setup and the reverse-proxy alternative.
"""

from __future__ import annotations

import logging
import ssl

from chatd.config import ConfigError

log = logging.getLogger(__name__)

#: ALPN protocols offered, in our order of preference: HTTP/2 for REST when the client can,
#: HTTP/1.1 otherwise. A browser opening a WebSocket offers only http/1.1.
ALPN_PROTOCOLS = ("h2", "http/1.1")
#: TLS 1.2 cipher suites: ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 (Mozilla
#: "intermediate"; no CBC, no RSA key exchange). TLS 1.3 suites are all of this kind
#: already and are not affected by this string.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server-side context with the certificate chain in `certfile` and its key in
    `keyfile` (both PEM). Raises OSError (ssl.SSLError is one) if they cannot be loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    # Client-initiated renegotiation costs the server a handshake per request of a client
    # that wants to waste its CPU; nothing legitimate needs it.
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    context.load_cert_chain(certfile, keyfile)
    return context


class ServerCertificate:
    """The context new TLS connections are accepted with; `reload()` rereads the files."""

    def __init__(self, certfile: str, keyfile: str) -> None:
        if not certfile or not keyfile:
            missing = "server.keyfile" if certfile else "server.certfile"
            raise ConfigError(f"{missing}: TLS needs both server.certfile and server.keyfile")
        self.certfile = certfile
        self.keyfile = keyfile
        try:
            self.context = server_context(certfile, keyfile)
        except OSError as exc:  # ssl.SSLError included
            raise ConfigError(f"server.certfile: cannot load the certificate {certfile} "
                              f"with the key {keyfile}: {_reason(exc)}") from None

    def reload(self) -> bool:
        """Reread the certificate and key for connections accepted from now on. On failure
        the current certificate stays and the error is logged; returns whether it worked."""
        try:
            context = server_context(self.certfile, self.keyfile)
        except OSError as exc:  # ssl.SSLError included
            log.error("TLS certificate not reloaded, still serving the previous one: "
                      "cannot load %s with %s: %s", self.certfile, self.keyfile, _reason(exc))
            return False
        self.context = context
        log.info("TLS certificate reloaded from %s", self.certfile)
        return True


def _reason(error: OSError) -> str:
    # ssl.SSLError is an OSError whose strerror is not set; its str() names the problem.
    if isinstance(error, ssl.SSLError):
        return str(error)
    return error.strerror or str(error)
