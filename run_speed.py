"""Speed and memory sweep (Fig. 1(c)(d) and Table 3 of the OmniMamba paper).

Not implemented yet: it is tracked by its own issue (speed and memory sweep to 100k tokens). This script
exits non-zero with that message rather than printing numbers it did not measure."""
import sys

if __name__ == "__main__":
    print("error: run_speed.py is not implemented yet (see the speed-sweep issue); use run_eval.py for accuracy",
          file=sys.stderr)
    sys.exit(2)
