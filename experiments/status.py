"""Entry point `python -m experiments.status`: finished, stale, missing, failed and refused runs of a profile, and
the changed files behind the stale ones (experiments.drivers.status)."""
import sys

from experiments.drivers.status import main

if __name__ == "__main__":
    sys.exit(main())
