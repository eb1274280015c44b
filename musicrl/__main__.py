"""`python -m musicrl` (and `torchrun -m musicrl train ...`): the `musicrl` command."""

import sys

from musicrl.cli import main

sys.exit(main())
