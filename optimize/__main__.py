import sys

from optimize.launch import run

sys.exit(run())
