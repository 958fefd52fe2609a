"""Concurrency: hold many streams open on a slow upstream through one router process, send short
requests meanwhile, and report whether every stream ended well, how long the short requests
took, and the router's memory at the peak."""
from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import psutil


def _rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 1e6


async def _run(url: str, n: int, seconds: float, stream_model: str, short_model: str, pid: int) -> dict[str, float]:
    body = {"messages": [{"role": "user", "content": "hi"}]}

    async def stream(session: aiohttp.ClientSession) -> bool:
        async with session.post(url, json={**body, "model": stream_model, "stream": True}) as resp:
            events = [line async for line in resp.content if line.startswith(b"data: ")]
            return resp.status == 200 and events[-1].strip() == b"data: [DONE]"

    async def short(session: aiohttp.ClientSession) -> float:
        t0 = time.perf_counter()
        async with session.post(url, json={**body, "model": short_model, "max_tokens": 1}) as resp:
            await resp.read()
        return (time.perf_counter() - t0) * 1000

    connector = aiohttp.TCPConnector(limit=n + 20)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=seconds * 4 + 120)) as s:
        t0 = time.monotonic()
        streams = [asyncio.create_task(stream(s)) for _ in range(n)]
        await asyncio.sleep(seconds / 3)
        rss = _rss_mb(pid)
        shorts = [await short(s) for _ in range(20)]
        ok = await asyncio.gather(*streams, return_exceptions=True)
        wall = time.monotonic() - t0
    return {"streams": n, "stream_seconds": seconds, "streams_ok": sum(r is True for r in ok),
            "streams_wall_s": round(wall, 1), "short_during_streams_p50_ms": round(statistics.median(shorts), 2),
            "short_during_streams_max_ms": round(max(shorts), 2), "router_rss_mb_with_streams": round(rss)}


def hold_streams(url: str, n: int, seconds: float, stream_model: str, short_model: str, pid: int) -> dict[str, float]:
    return asyncio.run(_run(url, n, seconds, stream_model, short_model, pid))
