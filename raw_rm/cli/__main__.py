import sys

from raw_rm.cli import main

sys.exit(main())
