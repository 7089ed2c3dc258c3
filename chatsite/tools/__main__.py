"""`python -m chatsite.tools READ_FD WRITE_FD`: a tool process, started by a worker."""

import sys

from .child import main

main(sys.argv)
