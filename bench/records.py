"""Result files of the benchmark scripts: the run's date and machine, written as JSON.

Imports neither TensorFlow nor PyTorch, so any benchmark process can use it.
"""

import json
import os
import platform
import time


def machine_fields():
    """Return the date (UTC), the processor name and the CPU count of this run."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def write_record(path, record):
    """Write `record` as indented JSON to `path`, creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as stream:
        json.dump(record, stream, indent=2)
        stream.write("\n")
