import sys

from exchpatch.cli import main

sys.exit(main())
