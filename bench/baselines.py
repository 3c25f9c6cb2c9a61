"""The Python baselines, run as their own process: ``python -m bench.baselines MODE SPEC.json STATS.json``.

- ``floor``: a bare pymodbus asyncio loop doing what the agent's Modbus side must do at
  the least: one 31-register read (all 30 tags) per PLC per second, and one JSON message
  per line per second published at QoS 1 with paho; no counting, no windows, no outbox.
- ``floor-uvloop``: the floor's exact code on uvloop's event loop (the agent's loop when
  uvloop is installed); exits with status 3 if uvloop cannot be imported.
- ``naive``: what a hand-written script does: one request per tag (the uint32 counter,
  the state word, then the 28 other registers one at a time), 30 requests per PLC per
  cycle, then one message per line. At scale it cannot keep up: a cycle that outlasts
  the second starts the next one at once, and the achieved cycles are reported.

Each PLC has its own task (as in the agent), so one slow PLC does not hold back the
others. ``SPEC.json``: ``{"ports": {line: port}, "broker": [host, port], "topic_root": R,
"publish_s": P}``. With ``publish_s`` above 1 (default 1: every cycle) a PLC's task still
reads every second but publishes the values it last read only on its first cycle after a
wall-clock multiple of ``publish_s`` (a window boundary) since its last message.
SIGUSR1 writes ``STATS.json`` (atomically) with every cycle's wall-clock start and
duration so far; SIGTERM stops the loop and writes it once more.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import AsyncModbusTcpClient

__all__ = ["main"]

MODES = ("floor", "floor-uvloop", "naive")
PERIOD_S = 1.0
REGISTERS = 31  # counter (0-1), state (2), 28 other values (3..30)


class _Stats:
    def __init__(self) -> None:
        self.cycles: list[tuple[float, float]] = []  # (wall start, duration)
        self.errors = 0
        self.published = 0


async def _read_floor(client: AsyncModbusTcpClient) -> list[int]:
    rr = await client.read_holding_registers(0, count=REGISTERS, device_id=1)
    if rr.isError():
        raise RuntimeError(f"modbus exception {rr}")
    return list(rr.registers)


async def _read_naive(client: AsyncModbusTcpClient) -> list[int]:
    out: list[int] = []
    rr = await client.read_holding_registers(0, count=2, device_id=1)  # the uint32 counter
    if rr.isError():
        raise RuntimeError(f"modbus exception {rr}")
    out.extend(rr.registers)
    for address in range(2, REGISTERS):  # the state word and the 28 other values
        rr = await client.read_holding_registers(address, count=1, device_id=1)
        if rr.isError():
            raise RuntimeError(f"modbus exception {rr}")
        out.extend(rr.registers)
    return out


async def _plc_loop(mode: str, line: str, port: int, mq: mqtt.Client, root: str, stats: _Stats,
                    publish_s: float = PERIOD_S) -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    read = _read_naive if mode == "naive" else _read_floor
    every_cycle = publish_s <= PERIOD_S
    try:
        if not await client.connect():
            raise RuntimeError(f"cannot connect to PLC {line} on port {port}")
        next_start = time.monotonic()
        last_slot = int(time.time() // publish_s)  # the window of the last message (or of the start)
        while True:
            start = time.monotonic()
            wall = time.time()
            try:
                regs = await read(client)
            except Exception:
                stats.errors += 1
            else:
                slot = 0 if every_cycle else int(time.time() // publish_s)
                if every_cycle or slot != last_slot:
                    last_slot = slot
                    payload = json.dumps({"line": line, "ts": wall,
                                          "counter": (regs[0] << 16) | regs[1], "state": regs[2],
                                          "values": regs[3:]})
                    mq.publish(f"{root}/raw/{line}", payload, qos=1)
                    stats.published += 1
            end = time.monotonic()
            stats.cycles.append((wall, end - start))
            next_start += PERIOD_S
            if end >= next_start:
                next_start = end  # overran: start again at once
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(next_start - end)
    finally:
        client.close()


async def _run(mode: str, spec: dict[str, Any], stats_path: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    mq = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{mode}", protocol=mqtt.MQTTv5)
    mq.max_inflight_messages_set(0)
    mq.max_queued_messages_set(0)
    host, port = spec["broker"]
    mq.connect(host, int(port), keepalive=30)
    mq.loop_start()
    stats = _Stats()

    def snapshot() -> None:
        tmp = stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"mode": mode, "loop": f"{type(loop).__module__}.{type(loop).__name__}",
                                   "cycles": stats.cycles, "errors": stats.errors, "published": stats.published}))
        os.replace(tmp, stats_path)

    loop.add_signal_handler(signal.SIGUSR1, snapshot)
    publish_s = float(spec.get("publish_s", PERIOD_S))
    tasks = [asyncio.create_task(_plc_loop(mode, line, int(p), mq, spec["topic_root"], stats, publish_s))
             for line, p in sorted(spec["ports"].items())]
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        mq.disconnect()
        mq.loop_stop()
        await asyncio.to_thread(snapshot)


def main(argv: list[str]) -> int:
    mode, spec_path, stats_path = argv
    if mode not in MODES:
        raise SystemExit(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if mode == "floor-uvloop":
        try:
            import uvloop
        except ImportError:
            print("floor-uvloop: uvloop is not installed", file=sys.stderr)
            return 3
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_run(mode, json.loads(Path(spec_path).read_text()), Path(stats_path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
