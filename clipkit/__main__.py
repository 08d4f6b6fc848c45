"""`python -m clipkit ...` (and `torchrun ... -m clipkit train ...`): the same entry point as `clipkit`."""
import sys

from clipkit.cli import main

sys.exit(main())
