"""Health endpoints for App Service health checks, Container Apps and Kubernetes probes.

    urlpatterns = [path("health/", include("django_azure_mi.urls")), ...]

* ``health/live`` - liveness: the process answers (no I/O). 200 ``{"status": "ok"}``.
* ``health/ready`` - readiness: each configured service's token and a light probe (a ``select``, a
  ``PING``, a container's properties: each service's ``service.py`` says which). 200 when all pass, 503
  otherwise, with a JSON body that says which service (and alias) failed - and nothing else an
  anonymous caller could use: no diagnosis (role names, identity names, object ids), no timings. An
  authenticated staff user, or a view built with ``details=True`` (behind your own protection), also
  gets each check's time and diagnosis; ``manage.py azure_check`` always shows everything. Results are
  cached for ``cache_seconds`` (5) and probes share one run, so a burst of probes costs one round of
  checks; each run is bounded by ``timeout`` (5 s).

``ReadinessView.as_view(cache_seconds=10, timeout=3, details=False)`` changes the defaults.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache

from . import probes, runtime


@never_cache
def liveness(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@method_decorator(never_cache, name="dispatch")
class ReadinessView(View):
    http_method_names = ["get", "head"]
    cache_seconds: float = 5.0
    timeout: float = 5.0
    details: bool = False  # diagnoses and timings for everyone (else only for staff users)

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        checked, checked_at, results, cached = self._results()
        healthy = all(r.ok for r in results)
        user = getattr(request, "user", None)
        details = self.details or bool(user is not None and user.is_authenticated and user.is_staff)
        body = {
            "status": "ok" if healthy else "fail",
            "checked_at": round(checked_at, 3),
            "age_s": round(time.monotonic() - checked, 3),
            "cached": cached,
            "checks": [
                {
                    "service": r.service,
                    "alias": r.alias,
                    "ok": r.ok,
                    **({"elapsed_ms": r.elapsed_ms} if details else {}),
                    **({"diagnosis": r.diagnosis} if details and not r.ok else {}),
                }
                for r in results
            ],
        }
        return JsonResponse(body, status=200 if healthy else 503)

    def _results(self) -> tuple[float, float, list[probes.Result], bool]:
        state = runtime.get().component("readiness", Readiness)
        last = state.last
        if last is not None and time.monotonic() - last[0] < self.cache_seconds:
            return (*last, True)
        with state.lock:  # one probe run at a time; waiters take its results
            last = state.last
            if last is not None and time.monotonic() - last[0] < self.cache_seconds:
                return (*last, True)
            results = probes.run(probes.targets(purpose="ready"), timeout=self.timeout, deep=False)
            last = (time.monotonic(), time.time(), results)
            state.last = last
            return (*last, False)


class Readiness:
    """The last readiness results, shared by every request of the process: a runtime component."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last: tuple[float, float, list[probes.Result]] | None = None  # (monotonic, wall clock, results)

    def close(self) -> None:
        self.last = None

    def after_fork(self) -> None:
        self.lock = threading.Lock()


readiness = ReadinessView.as_view()
