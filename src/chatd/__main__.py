from __future__ import annotations

from chatd.cli import main

raise SystemExit(main())
