"""Speed and memory sweep to 100k tokens and image-generation speed (Fig. 1(c)(d), Table 3).

    python run_speed.py --models omnimamba,showo,janusflow --max-len 100000
    python run_speed.py --device cpu --preset tiny --max-len 256          # CPU smoke run

Points and reports go to --output-dir (default results/speed); the committed reports/speed/ only when named.
"""
import sys

from omnibench.speed_cli import main

if __name__ == "__main__":
    sys.exit(main())
