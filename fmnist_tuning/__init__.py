"""Tune a fully-connected network on Fashion-MNIST with Optuna and PyTorch Lightning."""

__version__ = "0.1.0"
