"""smtprs._threads.run_sync: to_thread.run_sync's semantics, lighter."""

from __future__ import annotations

import threading

import pytest
import trio

from smtprs import _threads


async def test_returns_the_result_from_another_thread():
    main = threading.get_ident()
    ident = await _threads.run_sync(threading.get_ident)
    assert ident != main


async def test_raises_what_the_thread_raised():
    def boom() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as e:
        await _threads.run_sync(boom)
    assert e.value.errno == 28


async def test_a_cancellation_waits_for_the_thread_to_finish():
    release = threading.Event()
    finished = []

    def work() -> str:
        release.wait(5)
        finished.append(True)
        return "done"

    with trio.move_on_after(0.05) as scope:
        threading.Timer(0.3, release.set).start()
        result = await _threads.run_sync(work)
    # the deadline passed while the thread ran, yet the call returned its
    # result only once the thread had finished (as to_thread.run_sync does)
    assert scope.cancel_called
    assert finished == [True] and result == "done"
