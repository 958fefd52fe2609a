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


async def _run(url: str, n: int, seconds: float, stream_model: str, short_model: str, pid: int,
               shorts: int) -> dict[str, float]:
    body = {"messages": [{"role": "user", "content": "hi"}]}

    async def stream(session: aiohttp.ClientSession) -> tuple[bool, int, float]:
        """(ended well, events, when it ended)"""
        async with session.post(url, json={**body, "model": stream_model, "stream": True}) as resp:
            events = [line async for line in resp.content if line.startswith(b"data: ")]
            ok = resp.status == 200 and bool(events) and events[-1].strip() == b"data: [DONE]"
            return ok, len(events), time.monotonic()

    async def short(session: aiohttp.ClientSession) -> float:
        t0 = time.perf_counter()
        async with session.post(url, json={**body, "model": short_model, "max_tokens": 1}) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"a short request failed with {resp.status}")
        return (time.perf_counter() - t0) * 1000

    connector = aiohttp.TCPConnector(limit=n + 20)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=seconds * 4 + 120)) as s:
        t0 = time.monotonic()
        streams = [asyncio.create_task(stream(s)) for _ in range(n)]
        await asyncio.sleep(seconds / 3)
        rss = _rss_mb(pid)
        latencies = [await short(s) for _ in range(shorts)]
        shorts_done = time.monotonic()
        ended = await asyncio.gather(*streams, return_exceptions=True)
        wall = time.monotonic() - t0
    done = [r for r in ended if isinstance(r, tuple)]
    return {"streams": n, "stream_seconds": seconds, "streams_ok": sum(ok for ok, _, _ in done),
            "stream_events_min": min((e for _, e, _ in done), default=0),
            "stream_events_max": max((e for _, e, _ in done), default=0),
            "streams_wall_s": round(wall, 1),
            # Were the short requests answered while every stream still ran (none waited for a thread)?
            "shorts_before_any_stream_ended": float(bool(done) and shorts_done < min(t for _, _, t in done)),
            "short_during_streams_p50_ms": round(statistics.median(latencies), 2),
            "short_during_streams_max_ms": round(max(latencies), 2), "router_rss_mb_with_streams": round(rss)}


def hold_streams(url: str, n: int, seconds: float, stream_model: str, short_model: str, pid: int,
                 shorts: int = 20) -> dict[str, float]:
    return asyncio.run(_run(url, n, seconds, stream_model, short_model, pid, shorts))
