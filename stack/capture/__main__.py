"""`python -m stack.capture [avro|flattened]`: record the Debezium fixtures (the stack
must be up; `avro`: the Avro ones, with the schema registry up too; `flattened`: those
of Debezium's ExtractNewRecordState SMT)."""

import sys

from stack.capture.records import CaptureError
from stack.process import StackError

if sys.argv[1:] == ["avro"]:
    from stack.capture.avro import capture
elif sys.argv[1:] == ["flattened"]:
    from stack.capture.flattened import capture
else:
    from stack.capture.run import capture

try:
    capture()
except (CaptureError, StackError) as exc:
    print(f"[capture] error: {exc}", file=sys.stderr)
    sys.exit(1)
