"""The drill writer as a process of its own, so that it can run on a client's test host.

`python -m lifeboat.devstack.hostwriter OUT START_ID` with the DSN in LIFEBOAT_WRITER_DSN
runs drill.Writer until SIGTERM, appending each acknowledged write to OUT as a line
`id monotonic-time server-port` (CLOCK_MONOTONIC is the machine's, so the drill compares
those times with its own). A line is written only after the commit was acknowledged.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from lifeboat.devstack.drill import Writer


def read_acked(path: Path) -> list[tuple[int, float, int]]:
    """What the writer wrote to `path` so far (a last line cut short is not counted)."""
    if not path.exists():
        return []
    acked = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            acked.append((int(parts[0]), float(parts[1]), int(parts[2])))
    return acked


def main() -> None:
    out, start_id = Path(sys.argv[1]), int(sys.argv[2])
    writer = Writer(os.environ["LIFEBOAT_WRITER_DSN"], start_id)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    writer.start()
    written = 0
    with out.open("a") as file:

        def flush() -> None:
            nonlocal written
            new = writer.acked[written:]
            file.writelines(f"{i} {t:.6f} {port}\n" for i, t, port in new)
            file.flush()
            written += len(new)

        while not stop.wait(0.05):
            flush()
        writer.stop()
        flush()


if __name__ == "__main__":
    main()
