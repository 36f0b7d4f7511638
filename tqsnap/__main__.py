"""``python -m tqsnap``: the ``tqsnap`` command, for environments where the script is not on PATH."""

import sys

from .faces.cli import main

if __name__ == "__main__":
    sys.exit(main())
