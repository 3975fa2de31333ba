"""Fan-out of one change to N subscribed connections held by receiver processes.

Each server (raw, direct, asgi) gets N subscribers on ``users`` (no filter), spread over
the receiver processes. A round sends one ``create`` on a separate trigger connection
and waits until every subscriber has the notification (tagged by the row's ``name``).
Latency per subscriber is its arrival time minus the moment just before the trigger was
written (one monotonic clock for all processes): it includes the insert. "from
publish" starts instead when the change entered the server's fan-out (framework: the
relay's sink; raw: just before ``websockets.broadcast``). The framework runs each round
twice: without hooks, and with one masking after-read hook declared per identity (it
runs once per identity and shape of the notification; the subscribers here are all
anonymous, one identity). Variants interleave within each round; round 0 is a warm-up.
Sizes grow by connecting more subscribers, so the same connections serve every size.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from bench.common import (
    HOST,
    PATH,
    Receivers,
    Report,
    Row,
    Server,
    Settings,
    median,
    percentile,
    rotate,
)
from bench.wsclient import WSClient, connect

__all__ = ["run_fanout"]

SUBSCRIBE: dict[str, Any] = {
    "type": "subscription",
    "operation": "subscribe",
    "entity": "users",
}

VARIANTS: list[tuple[str, str, bool]] = [
    ("raw", "raw", False),
    ("direct", "direct", False),
    ("direct + masking hook", "direct", True),
    ("asgi", "asgi", False),
    ("asgi + masking hook", "asgi", True),
]

_decode = msgspec.json.Decoder().decode


class _Trigger:
    """Sends creates and checks their responses."""

    def __init__(self) -> None:
        self.client: WSClient | None = None
        self.errors = 0

    def on_message(self, client: WSClient, payload: bytes, now: float) -> None:
        message = _decode(payload)
        if (
            isinstance(message, dict)
            and message.get("type") == "response"
            and not message.get("success")
        ):
            self.errors += 1

    async def open(self, port: int) -> None:
        self.client = await connect(HOST, port, PATH, self.on_message)

    def send(self, tag: str) -> float:
        assert self.client is not None
        payload = (
            b'{"id":"%s","type":"request","operation":"create","entity":"users",'
            b'"data":{"name":"%s","email":"f@example.com","status":"active"}}'
            % (tag.encode(), tag.encode())
        )
        frame_start = time.monotonic()
        self.client.send(payload)
        return frame_start


async def run_fanout(
    servers: dict[str, Server],
    receivers: Receivers,
    settings: Settings,
    report: Report,
) -> None:
    triggers: dict[str, _Trigger] = {}
    for kind, server in servers.items():
        triggers[kind] = _Trigger()
        await triggers[kind].open(server.port)
    hooked: dict[str, bool] = dict.fromkeys(servers, False)
    connected = 0
    curve: dict[str, dict[int, dict[str, float]]] = {}
    try:
        for size in settings.fanout_sizes:
            await asyncio.gather(
                *(
                    receivers.connect(
                        kind,
                        server.port,
                        size - connected,
                        subscribe=SUBSCRIBE,
                        record=True,
                    )
                    for kind, server in servers.items()
                )
            )
            connected = size
            results: dict[str, dict[str, list[float]]] = {
                name: {"all": [], "p50": [], "p99": [], "publish": [], "loop": []}
                for name, _, _ in VARIANTS
            }
            tags: dict[str, list[str]] = {kind: [] for kind in servers}
            for r in range(settings.rounds + settings.warm_rounds):
                for name, kind, hook in rotate_variants(r):
                    server = servers[kind]
                    if kind != "raw" and hooked[kind] != hook:
                        await server.hook(hook)
                        hooked[kind] = hook
                    tag = f"fan-{size}-{kind}-{int(hook)}-{r}"
                    tags[kind].append(tag)
                    t0 = triggers[kind].send(tag)
                    times = await receivers.wait_tag(
                        kind, tag, timeout=settings.fanout_timeout
                    )
                    marks = await server.marks()
                    if r < settings.warm_rounds or not times:
                        continue
                    latencies = sorted(t - t0 for t in times)
                    res = results[name]
                    res["all"].append(latencies[-1] * 1000)
                    res["p50"].append(percentile(latencies, 0.5) * 1000)
                    res["p99"].append(percentile(latencies, 0.99) * 1000)
                    if tag in marks:
                        entered, returned = marks[tag]
                        res["publish"].append((max(times) - entered) * 1000)
                        res["loop"].append((returned - entered) * 1000)
                    # Let the server finish the round (responses, hooks) before the next.
                    await asyncio.sleep(0.02)
            for kind in servers:
                counted = await receivers.verify(kind, tags[kind])
                report.count(f"fan-out {kind}").add(counted)
                key = f"fanout-{size}-{kind}"
                report.raw[key] = str(counted)
            _rows(size, results, report)
            for name, res in results.items():
                curve.setdefault(name, {})[size] = {
                    "all": median(res["all"]),
                    "p50": median(res["p50"]),
                    "p99": median(res["p99"]),
                    "publish": median(res["publish"]),
                    "loop": median(res["loop"]),
                }
        for kind in servers:
            # Anything left over is a notification nobody asked for.
            counted = await receivers.verify(kind, [], final=True)
            report.count(f"fan-out {kind}").add(counted)
    finally:
        for trigger in triggers.values():
            if trigger.client is not None:
                trigger.client.close()
        for kind in servers:
            await receivers.close(kind)
        for kind, on in hooked.items():
            if on:
                await servers[kind].hook(False)
    errors = sum(t.errors for t in triggers.values())
    if errors:
        report.notes.append(f"fan-out: {errors} trigger creates failed")
        report.count("request errors").lost += errors
    report.raw["fanout_curve"] = curve


def rotate_variants(r: int) -> list[tuple[str, str, bool]]:
    order = rotate([name for name, _, _ in VARIANTS], r)
    by_name = {v[0]: v for v in VARIANTS}
    return [by_name[name] for name in order]


def _rows(
    size: int, results: dict[str, dict[str, list[float]]], report: Report
) -> None:
    raw = results["raw"]
    for name, kind, hook in VARIANTS[1:]:
        res = results[name]
        if size >= 10_000:
            target, threshold, absolute = "all ≤ 200 ms", 200.0, True
        elif size >= 1_000:
            target, threshold, absolute = "ratio ≤ 1.5", 1.5, False
        else:
            target, threshold, absolute = "", 0.0, False
        if hook or kind != "direct":
            target = "(reported)"
        row = Row(
            scenario=f"fan-out to {size:,} subscribers, all received (from request)",
            route=name,
            unit="ms",
            framework=res["all"],
            raw=raw["all"],
            higher_is_better=False,
            target=target,
            notifications=(
                f"{report.raw.get(f'fanout-{size}-{kind}', '—')} "
                f"(raw {report.raw.get(f'fanout-{size}-raw', '—')})"
            ),
            fw_detail=(
                f"p50 {median(res['p50']):.1f} / p99 {median(res['p99']):.1f}; "
                f"from publish {median(res['publish']):.1f}"
                + (
                    ""
                    if hook
                    else f"; {'queue' if kind == 'asgi' else 'send'} loop "
                    f"{median(res['loop']):.1f}"
                )
            ),
            raw_detail=(
                f"p50 {median(raw['p50']):.1f} / p99 {median(raw['p99']):.1f}; "
                f"from publish {median(raw['publish']):.1f}; "
                f"send loop {median(raw['loop']):.1f}"
            ),
        )
        if threshold and not hook and kind == "direct":
            if absolute:
                row.meets = row.fw_median <= threshold
            else:
                ratio = row.ratio
                row.meets = ratio is not None and ratio <= threshold
        report.rows.append(row)
