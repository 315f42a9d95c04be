"""Stand-in for pip's get-pip.py bootstrap script, used by ``scripts/ansible-test.sh``.

ansible-test downloads get-pip.py from a host that CI machines cannot reach. This does
the same job from the standard library: bootstrap pip with ensurepip, then install what
ansible-test asked for (from PyPI, which is reachable).
"""

import subprocess
import sys

GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")

# In a child process: ensurepip turns pip's configuration off in its own environment,
# which would drop the machine's pip.conf (index, CA bundle) for the install below.
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
