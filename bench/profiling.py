"""Where the agent's time goes: a cProfile run of the agent, summarised by function and module.

cProfile sees the event loop's thread only (the store's SQLite worker thread and paho's
socket calls made from the loop are included where the loop makes them); it slows Python
code down, so the shares matter, not the absolute times. Shares are of the busy time: the
loop's wait in ``epoll`` is left out.
"""

from __future__ import annotations

import pstats
from pathlib import Path
from typing import Any

__all__ = ["summarise"]


def _where(key: tuple[str, int, str]) -> tuple[str, str]:
    path, line, func = key
    if path == "~":
        return "(builtins)", func
    p = Path(path)
    parts = p.parts
    for anchor in ("site-packages", "agent", "simulators", "bench"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            rel = "/".join(parts[i + 1:]) if anchor == "site-packages" else "/".join(parts[i:])
            return rel, f"{func}:{line}"
    if "python3" in path:
        return "stdlib/" + p.name, f"{func}:{line}"
    return p.name, f"{func}:{line}"


def summarise(profile: Path, top: int = 20) -> dict[str, Any]:
    """Top functions by own time, and own time per package/module, as shares of the total."""
    st = pstats.Stats(str(profile))
    # time the loop spends waiting in epoll is idle time, not work: leave it out of the total
    raw: dict[Any, Any] = {k: v for k, v in st.stats.items()  # type: ignore[attr-defined]
                           if not (k[0] == "~" and "select.epoll" in k[2])}
    total = sum(v[2] for v in raw.values()) or 1.0
    funcs: list[tuple[float, float, str]] = []
    modules: dict[str, float] = {}
    for key, (_cc, _nc, tt, ct, _callers) in raw.items():
        mod, func = _where(key)
        funcs.append((tt, ct, f"{mod}:{func}"))
        group = mod.split("/")[0] if not mod.startswith(("agent/", "stdlib/")) else mod
        modules[group] = modules.get(group, 0.0) + tt
    funcs.sort(reverse=True)
    cum = sorted(((ct, f"{_where(k)[0]}:{_where(k)[1]}") for k, (_a, _b, _tt, ct, _c) in raw.items()
                  if _where(k)[0].startswith("agent/")), reverse=True)
    return {
        "total_s": round(total, 2),
        "top_own_time": [{"where": w, "share_pct": round(100 * tt / total, 1)} for tt, _ct, w in funcs[:top]],
        "top_agent_cumulative": [{"where": w, "share_pct": round(100 * ct / total, 1)} for ct, w in cum[:top]],
        "by_module": {m: round(100 * t / total, 1)
                      for m, t in sorted(modules.items(), key=lambda kv: -kv[1])[:top]},
    }
