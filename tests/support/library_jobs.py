"""A job script for an application of the stand-in's library, made the way a real job's is.

Core's job (the stand-in's ``make_job``), the gateway's UCloudJob, the operator's submit request, the
instance's render: no process, so the unit tier renders with it and the integration tier runs what it renders.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from ucim.common.products import DEFAULT_MACHINE_TYPES
from ucim.gateway.jobs import to_ucloud_job
from ucim.operator.jobs import submit_request
from ucim.testing.core_standin import make_job
from ucim.user_sidecar.load_instructions import SiteApplications, parse_documents
from ucim.user_sidecar.sbatch import JobScript, render_job

REPO = Path(__file__).resolve().parents[2]
# The load instructions of ucim-testing as hack/local_platform.py writes them (PYTHONPATH = this repository).
UCIM_TESTING_YML = f"""\
name: ucim-testing
configurations:
  - versions: ["1"]
    load: |
      export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}
"""


def testing_site() -> SiteApplications:
    documents = parse_documents(UCIM_TESTING_YML, source="ucim-testing.yml")
    return SiteApplications(applications={d.name: d.configurations for d in documents})


def library_job(name: str, folder: Path, *, port: int | None = None, job_id: str = "4821") -> JobScript:
    """The script of ``name``@1 for a job of alice's in ``folder``; ``port`` is the WEB/VNC port (random if None)."""
    job = make_job(job_id, "alice", (name, "1"))
    ucloud_job = to_ucloud_job(
        job, namespace="ucim", cluster="local", provider_id="ucim", machines=list(DEFAULT_MACHINE_TYPES)
    )
    ucloud_job.metadata.uid = str(uuid.uuid4())  # the apiserver's, at creation
    return render_job(submit_request(ucloud_job), folder, testing_site(), {}, port=port)
