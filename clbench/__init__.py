"""clbench: a benchmarking suite for continual learning with pretrained vision transformers."""

__version__ = "0.1.0"
