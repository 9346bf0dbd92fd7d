"""Run (or resume) a tuning study on Fashion-MNIST.

    python scripts/tune.py --data-dir ../shared/data/fashion-mnist --n-trials 6 --max-epochs 3

Same as the ``fmnist-tune`` console command; ``--help`` lists every flag.
"""

from fmnist_tuning.cli import entry

if __name__ == "__main__":
    entry()
