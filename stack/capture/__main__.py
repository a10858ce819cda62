"""`python -m stack.capture [avro]`: record the Debezium fixtures (the stack must be
up; `avro`: the Avro ones, with the schema registry up too)."""

import sys

if sys.argv[1:] == ["avro"]:
    from stack.capture.avro import main
else:
    from stack.capture.run import main

sys.exit(main())
