"""`python -m disttrain_trainer` is `disttrain-trainer`."""

from .cli import main

main()
