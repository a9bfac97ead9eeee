"""Cold (fresh state) and warm (existing state) start time of each service of the local stack.

Stops the stack first and leaves it stopped. Writes bench/results/stack.json."""

import sys

from stack.cli import main

sys.exit(main(["bench"]))
