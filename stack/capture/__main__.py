"""`python -m stack.capture [avro|flattened]`: record the Debezium fixtures (the stack
must be up; `avro`: the Avro ones, with the schema registry up too; `flattened`: those
of Debezium's ExtractNewRecordState SMT)."""

import sys

if sys.argv[1:] == ["avro"]:
    from stack.capture.avro import main
elif sys.argv[1:] == ["flattened"]:
    from stack.capture.flattened import main
else:
    from stack.capture.run import main

sys.exit(main())
