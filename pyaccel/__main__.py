"""``python -m pyaccel``: the ``pyaccel`` command line (see :mod:`pyaccel.cli`)."""

import sys

from pyaccel.cli import main

sys.exit(main())
