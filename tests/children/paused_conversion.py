"""A conversion that pauses after writing its first tensor, for the fault-injection tests.

    python paused_conversion.py SOURCE OUTPUT STATE_DIR [--overwrite]

After the first tensor it creates STATE_DIR/paused, then waits until STATE_DIR/go exists (or is killed).
Exit status: 0 written, 2 refused or failed (the error on stderr).
"""

import sys
import time
from pathlib import Path

from hovle.conversion import to_transformers
from hovle.conversion.checkpoint_io import CheckpointError, StreamingSafetensorsWriter
from hovle.conversion.output_folder import Interrupted

source, output, state = sys.argv[1], sys.argv[2], Path(sys.argv[3])
original_add = StreamingSafetensorsWriter.add


def paused_add(self, name, tensor):
    original_add(self, name, tensor)
    if not (state / "paused").exists():
        (state / "paused").touch()
        while not (state / "go").exists():
            time.sleep(0.05)


StreamingSafetensorsWriter.add = paused_add
try:
    to_transformers.convert(source, output, dtype="float32", overwrite="--overwrite" in sys.argv, progress=False)
except CheckpointError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
except Interrupted as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(error.exit_code)
print("written")
