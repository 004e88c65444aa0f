"""``python -m hwsim``: the command line (hwsim.cli)."""
import sys

from hwsim.cli import main

sys.exit(main())
