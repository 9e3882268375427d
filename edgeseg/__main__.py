"""``python -m edgeseg`` is the ``edgeseg`` command."""

import sys

from edgeseg.cli import main

sys.exit(main())
