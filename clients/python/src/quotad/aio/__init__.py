"""quotad on asyncio (grpc.aio): the API of `quotad` with coroutines.

    import quotad.aio

    async with quotad.aio.Client() as client:
        async with client.reserve("acme", "gpu.shared.a10", 60_000) as r:
            await run_job()
            await r.commit(45_000)

Values, enums and exceptions are the ones of `quotad` (`quotad.Denied`, ...). Create
clients inside the event loop that uses them.
"""

from __future__ import annotations

from .admin import Admin
from .client import Client
from .meter import Meter
from .reservation import Reservation
from .session import Session
from .watch import Watch

__all__ = ["Admin", "Client", "Meter", "Reservation", "Session", "Watch"]
