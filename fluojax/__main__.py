"""``python -m fluojax``: the ``fluojax`` command."""

from fluojax.cli import run

run()
