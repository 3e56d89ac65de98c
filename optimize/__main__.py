import sys

from optimize.launch import exit_interrupted, run

code = run()
if code == 130:
    exit_interrupted()
sys.exit(code)
