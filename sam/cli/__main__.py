"""``python -m sam.cli ...`` (and ``torchrun -m sam.cli ...``) is ``sam-train ...``."""

from sam.cli.train import train_main

train_main()
