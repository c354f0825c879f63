#!/usr/bin/env python
"""Train IGC-VDSR / VDSR: a thin front end for ``igc_kernels.cli.train`` (see ``--help``)."""

import sys

from igc_kernels.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
