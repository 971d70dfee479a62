"""`python -m omnibench ...`: run_eval.py's command line, for an installed package."""
import sys

from omnibench.cli import main

sys.exit(main())
