"""Entry point of a release: ``<release>/bin/exchnode --config NODE_JSON``.

Copied to ``bin/exchnode`` by the release builder. It puts its own release folder
first on ``sys.path`` so the node always runs the code of the release it was started
from, never anything from the controller's environment.
"""
import os
import sys

RELEASE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path.insert(0, RELEASE_DIR)

from exchnode.common import main  # noqa: E402 - path set up just above

sys.exit(main(RELEASE_DIR, sys.argv[1:]))
