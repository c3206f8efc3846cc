"""Entry point `python -m experiments.verify`: a verdict (reproduced / differs / inconclusive) for every table cell
against a reference (experiments.drivers.verify)."""
import sys

from experiments.drivers.verify import main

if __name__ == "__main__":
    sys.exit(main())
