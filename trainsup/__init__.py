"""trainsup: keep long PyTorch training runs alive on a workstation."""

__version__ = "0.1.0"
