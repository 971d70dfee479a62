"""Evaluate a model on understanding / generation benchmarks. See README.md."""
import sys

from omnibench.cli import main

if __name__ == "__main__":
    sys.exit(main())
