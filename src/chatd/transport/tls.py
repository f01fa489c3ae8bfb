"""Mutual TLS for mesh links, from the files `cluster.tls_*` name.

Every shard presents its certificate and checks its peer's against the cluster's CA, in
both directions; the cluster secret is still proven inside the handshake (docs/mesh.md).
"""

from __future__ import annotations

import ssl

from chatd.config import ConfigError


def mesh_tls_contexts(certfile: str, keyfile: str,
                      cafile: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(the context a shard accepts with, the one it dials with)."""
    try:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cafile)
        server.verify_mode = ssl.CERT_REQUIRED
        server.load_cert_chain(certfile, keyfile)
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        client.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cluster.tls_*: cannot load the mesh certificates: {exc}") from None
    return server, client
