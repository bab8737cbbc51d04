"""``python -m rabbitsocks``: the same as the ``rabbitsocks`` command."""

import sys

from rabbitsocks.cli import main

sys.exit(main())
