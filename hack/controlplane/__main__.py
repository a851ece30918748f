"""``python -m controlplane`` (with hack/ on sys.path): the command line of cli.py."""

import sys

from .cli import main

sys.exit(main())
