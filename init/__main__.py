"""Entry point of /init (as PID 1) and of ``python -m initium`` (the command line)."""

from __future__ import annotations

import os
import sys


def main() -> None:
    if os.getpid() == 1:
        from initium.boot import boot

        boot()
    from initium.cli import main as cli_main

    sys.exit(cli_main())


if __name__ == "__main__":
    main()
