"""cnnbench: how fast a machine trains and runs convolutional networks, and whether the answers stay right."""

__version__ = "0.1.0"
