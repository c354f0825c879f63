#!/usr/bin/env python
"""Thin front end: see igc_kernels/cli/upscale.py (installed as `igc-upscale`)."""

import sys

from igc_kernels.cli.upscale import main

if __name__ == "__main__":
    sys.exit(main())
