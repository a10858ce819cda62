"""`python -m stack.capture`: record the Debezium fixtures (the stack must be up)."""

import sys

from stack.capture.run import main

sys.exit(main())
