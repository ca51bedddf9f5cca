"""``python -m fluojax.cli``: the ``fluojax`` command."""

from fluojax.cli import run

run()
