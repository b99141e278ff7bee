"""The JSON-lines files the rehearsal's probes write from inside verl's worker processes."""

import json
import os


def append_record(path, record: dict) -> None:
    """One JSON line in one O_APPEND write, so the lines of concurrent workers never interleave."""
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def read_records(path) -> list[dict]:
    """Every record of the file, [] when there is none. Only the last line may be cut short (a
    worker killed while it wrote); it is skipped, and a bad line anywhere else raises."""
    try:
        lines = [line for line in open(path).read().splitlines() if line.strip()]
    except OSError:
        return []
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise
    return records
