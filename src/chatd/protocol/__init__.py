"""Sans-I/O wire protocols: bytes or text in, typed frames out, and back. No sockets here."""
