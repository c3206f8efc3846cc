"""Entry point `python -m experiments.train [overrides]`: one run or a Hydra sweep (experiments.drivers.train)."""
from experiments.drivers.train import cli

if __name__ == "__main__":
    cli()
