"""examples/subscriber.py, run as a program against Mosquitto, keeps exact totals
through redelivered and late windows."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from tests.fixtures.mosquitto import MosquittoBroker
from tests.test_watch import EPOCH, ROOT, line_output, plant_output, publish

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "subscriber.py"


async def _read_until(stream: asyncio.StreamReader, marker: str, seen: list[str],
                      within_s: float = 10.0) -> None:
    """Collect lines into ``seen`` until one contains ``marker``."""
    async with asyncio.timeout(within_s):
        while True:
            raw = await stream.readline()
            assert raw, f"the example exited before printing {marker!r}; output: {seen}"
            seen.append(raw.decode().rstrip("\n"))
            if marker in seen[-1]:
                return


async def test_example_totals_survive_duplicates(mosquitto: MosquittoBroker) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--broker", mosquitto.url, "--root", ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        await _read_until(proc.stdout, "listening on", seen)
        await asyncio.to_thread(publish, mosquitto, [
            line_output("kei-ev", 1, 3), line_output("kei-ev", 1, 3), line_output("kei-ev", 2, 4),
            plant_output(1, 7), line_output("rogue", 1, 5), line_output("kei-ev", 2, 4),
            line_output("kei-ev", 4, 1),
            line_output("kei-ev", 3, 6, historical=True), line_output("kei-ev", 3, 6, historical=True),
            line_output("rogue", 2, 2),
            # the agent's store was lost: a new epoch, whose seq 1 is not a repeat
            line_output("rogue", 1, 9, epoch=EPOCH + 1, minute=3),
        ])
        await _read_until(proc.stdout, f"rogue epoch={EPOCH + 1} seq=1", seen)
        # SIGTERM: a job started in the background by a shell has SIGINT ignored
        proc.send_signal(signal.SIGTERM)
        await _read_until(proc.stdout, "totals:", seen)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    counted = [line for line in seen if " seq=" in line]
    assert len(counted) == 7  # one line per distinct (line, epoch, seq)
    assert f"kei-ev epoch={EPOCH} seq=3 units=6 total=14 (historical)" in counted
    assert seen[-1] == "totals: kei-ev=14, rogue=16"
