"""``python -m bench [--smallest|--quick|--full] [--out DIR] ...``; see ``bench/__init__.py``."""

from __future__ import annotations

import sys

from bench.config import parse
from bench.load import wrk_path
from bench.profile import py_spy
from bench.run import main

if __name__ == "__main__":
    if wrk_path() is None:
        sys.exit("python -m bench: wrk is not installed (apt-get install wrk, or scripts/services)")
    config = parse()
    if config.profile and py_spy() is None:
        sys.exit("python -m bench: --profile needs py-spy (pip install py-spy)")
    sys.exit(main(config))
