"""`plantfloor simulate SIMCONFIG --ledger LEDGER`, with production held until released.

Run inside the test container by the installed agent's Python (the simulators ship in the
same wheel). The PLCs serve and the ledger is kept exactly as ``plantfloor simulate`` does
(the same SimulatorSet), but every line starts held, its state "stopped" and nothing built,
so the agent's first reading, its baseline, is the counters' start values and the ledger's
``expected_units`` is exactly what the agent must count from then on. Signals steer it:
SIGUSR1 lets every line run, SIGUSR2 holds every line again (a held line builds nothing and
shows "stopped"), SIGTERM or SIGINT stops (the ledger gets its final state).

    python held_simulators.py SIMCONFIG LEDGER
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from simulators.config import load_sim_config
from simulators.runner import SimulatorSet

log = logging.getLogger("held-simulators")


async def main(sim_config: Path, ledger: Path) -> None:
    sims = SimulatorSet(load_sim_config(sim_config), auto=True, ledger_path=ledger)
    stop = asyncio.Event()

    def steer(state: str) -> None:
        for line in sims.lines.values():
            line.set_state(state)
        log.info("every line %s", "runs" if state == "running" else "held")

    steer("stopped")
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, steer, "running")
    loop.add_signal_handler(signal.SIGUSR2, steer, "stopped")
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with sims:
        log.info("PLCs listening: %s", ", ".join(sims.plcs))
        await stop.wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
