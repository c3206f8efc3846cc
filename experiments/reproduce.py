"""Entry point `python -m experiments.reproduce`: run unfinished configs, render tables and figures
(experiments.drivers.reproduce)."""
import sys

from experiments.drivers.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
