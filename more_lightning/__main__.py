"""``python -m more_lightning``: see :mod:`more_lightning.cli`."""

import sys

from more_lightning.cli import main

if __name__ == "__main__":
    sys.exit(main())
