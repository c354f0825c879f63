#!/usr/bin/env python
"""Thin front end: see igc_kernels/cli/evaluate.py (installed as `igc-eval`)."""

import sys

from igc_kernels.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
