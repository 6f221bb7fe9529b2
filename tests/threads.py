"""Running the same action in several threads at the same moment, to provoke races."""

from __future__ import annotations

import threading
from collections.abc import Callable


def all_at_once(action: Callable[[], None], count: int) -> list[BaseException]:
    """Run `action` in `count` threads released together by a barrier; the errors they raised."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            action()
        except BaseException as err:  # noqa: BLE001 - handed back to the caller
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
