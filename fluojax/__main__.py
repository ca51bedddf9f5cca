"""``python -m fluojax``: the ``fluojax`` command."""

import sys

from fluojax.cli import main

sys.exit(main())
