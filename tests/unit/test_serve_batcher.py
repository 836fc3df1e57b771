"""The asyncio micro-batcher behind the member and ingress batching (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from raw_rm.serve.batcher import MicroBatcher


def _run(coro):
    return asyncio.run(coro)


def test_requests_that_arrive_during_a_batch_form_the_next_batch_whole() -> None:
    # Serve's @serve.batch cut these 30 requests into timer-sized batches while the first batch ran;
    # here the 30 that queued during batch 1 become batch 2 (up to max_batch_size)
    calls: list[list[int]] = []
    release = asyncio.Event

    async def main() -> list[int]:
        gate = release()

        async def fn(items: list[int]) -> list[int]:
            calls.append(list(items))
            if len(calls) == 1:
                await gate.wait()
            return [x * 10 for x in items]

        batcher = MicroBatcher(fn, max_batch_size=64, batch_wait_timeout_s=0.0)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # batch 1 = [0] is running
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 31)]
        await asyncio.sleep(0.05)  # far longer than any timer: nothing new may start while batch 1 runs
        assert len(calls) == 1, calls
        gate.set()
        return [await first] + [await r for r in rest]

    results = _run(main())
    assert results == [x * 10 for x in range(31)]
    assert calls == [[0], list(range(1, 31))]


def test_max_batch_size_counts_size_fn_units_and_an_oversized_item_goes_alone() -> None:
    calls: list[list[str]] = []

    async def main() -> list[int]:
        async def fn(items: list[str]) -> list[int]:
            calls.append(list(items))
            return [len(x) for x in items]

        batcher = MicroBatcher(fn, max_batch_size=5, batch_wait_timeout_s=0.05, size_fn=len)
        return list(await asyncio.gather(*(batcher.submit(x) for x in ["aaa", "bb", "c", "dddddddd", "ee"])))

    assert _run(main()) == [3, 2, 1, 8, 2]
    assert calls == [["aaa", "bb"], ["c"], ["dddddddd"], ["ee"]]


def test_an_idle_batcher_waits_for_company_at_most_the_timeout() -> None:
    calls: list[list[int]] = []

    async def main() -> None:
        async def fn(items: list[int]) -> list[int]:
            calls.append(list(items))
            return items

        batcher = MicroBatcher(fn, max_batch_size=8, batch_wait_timeout_s=0.2)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(batcher.submit(2))
        assert (await first, await second) == (1, 2)

    _run(main())
    assert calls == [[1, 2]]


def test_an_error_reaches_every_caller_of_its_batch_and_the_batcher_keeps_working() -> None:
    async def main() -> tuple[list[BaseException | int], int]:
        async def fn(items: list[int]) -> list[int]:
            if 13 in items:
                raise ValueError("unlucky batch")
            return items

        batcher = MicroBatcher(fn, max_batch_size=4, batch_wait_timeout_s=0.05)
        failed = await asyncio.gather(batcher.submit(13), batcher.submit(1), return_exceptions=True)
        return failed, await batcher.submit(2)

    failed, later = _run(main())
    assert [str(x) for x in failed] == ["unlucky batch", "unlucky batch"]
    assert later == 2


def test_concurrent_batches_run_side_by_side_up_to_the_limit() -> None:
    running: list[int] = []
    peak = 0

    async def main() -> None:
        nonlocal peak

        async def fn(items: list[int]) -> list[int]:
            nonlocal peak
            running.append(1)
            peak = max(peak, len(running))
            await asyncio.sleep(0.02)
            running.pop()
            return items

        batcher = MicroBatcher(fn, max_batch_size=1, max_concurrent_batches=3)
        assert await asyncio.gather(*(batcher.submit(i) for i in range(9))) == list(range(9))

    _run(main())
    assert peak == 3


def test_a_cancelled_caller_is_left_out_of_the_next_batch() -> None:
    calls: list[list[int]] = []

    async def main() -> None:
        gate = asyncio.Event()

        async def fn(items: list[int]) -> list[int]:
            calls.append(list(items))
            await gate.wait()
            return items

        batcher = MicroBatcher(fn, max_batch_size=8)
        busy = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        gate.set()
        assert (await busy, await kept) == (0, 2)

    _run(main())
    assert calls == [[0], [2]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size: expected >= 1, got 0"),
        ({"max_batch_size": 4, "max_concurrent_batches": 0}, "max_concurrent_batches: expected >= 1, got 0"),
        ({"max_batch_size": 4, "batch_wait_timeout_s": -1.0}, "batch_wait_timeout_s: expected >= 0, got -1.0"),
    ],
)
def test_bad_settings_are_refused_naming_the_argument(kwargs: dict, message: str) -> None:
    async def fn(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        MicroBatcher(fn, **kwargs)
