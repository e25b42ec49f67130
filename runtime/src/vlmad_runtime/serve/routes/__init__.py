"""The HTTP routes of ``vlmad serve``, one router per concern: health (probes, metrics, page, info), detect, and
reference sets. Each module's ``router(service)`` returns an ``APIRouter`` bound to the shared :class:`Service`."""
