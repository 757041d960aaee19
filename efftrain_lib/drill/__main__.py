"""`python -m efftrain_lib.drill`: the terminal drill (see --help)."""

import sys

from efftrain_lib.drill.terminal import cli

sys.exit(cli())
