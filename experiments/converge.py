"""Entry point `python -m experiments.converge`: does twice the training change a conclusion?
(experiments.drivers.converge)."""
import sys

from experiments.drivers.converge import main

if __name__ == "__main__":
    sys.exit(main())
