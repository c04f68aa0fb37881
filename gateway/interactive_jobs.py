"""The jobs that may serve web or VNC interfaces, watched: each request to an interface checks its job here.

A job is labelled ``ucim.io/interactive`` when the gateway creates it, if its application is a
WEB or VNC one or its template may call ``dynamicInterface``; the gateway watches those jobs
only (a handful, where all jobs may be thousands), so a request to an interface costs a lookup,
and an interface of a job that ended is closed at once.
"""

from __future__ import annotations

import functools

from ucim.common.informer import Informer
from ucim.common.kube import Kube
from ucim.common.resources import JobApplication, UCloudJob, cluster_selector

INTERACTIVE_LABEL = "ucim.io/interactive"


def may_serve_interfaces(app: JobApplication) -> bool:
    """Whether a job of ``app`` may serve a web or VNC interface (decided at creation, from the application)."""
    return app.type in ("WEB", "VNC") or any("dynamicInterface" in (part.template or "") for part in app.invocation)


def interactive_labels(app: JobApplication) -> dict[str, str]:
    return {INTERACTIVE_LABEL: "true"} if may_serve_interfaces(app) else {}


@functools.lru_cache(maxsize=4096)
def _object_name(job_id: str) -> str:
    return UCloudJob.name_for(job_id)


class InteractiveJobs:
    """The cache of interactive jobs (an Informer), from start-up to shutdown."""

    def __init__(self, kube: Kube, namespace: str, cluster: str) -> None:
        selector = f"{cluster_selector(cluster)},{INTERACTIVE_LABEL}=true"
        self.informer = Informer(kube, UCloudJob, namespace, label_selector=selector)

    def running(self, job_id: str) -> UCloudJob | None:
        """The job if it is running now."""
        job = self.informer.get(_object_name(job_id))
        return job if job is not None and job.status.state == "RUNNING" else None

    async def watch(self) -> None:
        await self.informer.run()
