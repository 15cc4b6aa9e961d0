"""hw5: explain a trained CNN image classifier. See `python hw5.py report --help`."""

import sys

from hw5lib.cli import main

if __name__ == "__main__":
    sys.exit(main())
