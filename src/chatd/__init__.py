"""chatd: a self-hostable chat server on Trio.

Layers, with imports flowing downward only:

    web/ (quart-trio routes)      cli, server
              \\                    /
               services/  (use cases)
              /         \\
     protocol/ (sans-I/O)   storage/ (the only rocksdict user)
              \\         /
               domain/  (pure)        errors, config
"""

from __future__ import annotations

__version__ = "0.1.0"
