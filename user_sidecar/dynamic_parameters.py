"""``jobs/requestDynamicParameters``: parameters this site adds to an application's form in UCloud.

Core asks every compute provider of the workspace when a user opens an application, and shows what each
answers below the application's own parameters (PROTOCOL-APPS §9). In the anchor's order:

1. **the Slurm account picker** (``_injected_slurmAccount``), when the site offers it: the accounts Slurm
   associates the user with, read as the user. Only without Core's accounting (with it, a job always runs
   under its workspace's account, so a choice would mislead); the operator uses the value then.
2. **a README** for each load instruction the site configured a readme for, and one saying which could not
   be resolved (the application has not been set up for this system);
3. **the module picker** (``_injected_modules``, from the site's Lmod spider JSON), when the application has
   no load instructions or one did not resolve: ``{- systemLoad -}`` loads what the user picks.
"""

from __future__ import annotations

from typing import Final

from pydantic import ConfigDict

from ucim.common.protocol import Application, ApplicationParameter, EnumOption, ResourceOwner, WireModel
from ucim.common.slurm import SlurmClient
from ucim.common.slurm_errors import SlurmError
from ucim.user_sidecar.load_instructions import SiteApplications

ACCOUNT_PARAMETER: Final = "_injected_slurmAccount"
MODULES_PARAMETER: Final = "_injected_modules"
README_PARAMETER: Final = "__readme__"


class DynamicParametersRequest(WireModel):
    model_config = ConfigDict(extra="ignore")

    owner: ResourceOwner
    application: Application


class DynamicParametersResponse(WireModel):
    parameters: list[ApplicationParameter]


async def dynamic_parameters(
    request: DynamicParametersRequest, site: SiteApplications, slurm: SlurmClient, *, account_picker: bool
) -> list[ApplicationParameter]:
    """What this site adds to the application's form for this user, in the anchor's order."""
    found: list[ApplicationParameter] = []
    if account_picker:
        found.append(await _account_picker(slurm))
    tool = request.application.invocation.tool.tool
    loads = [(app.name, app.version) for app in tool.description.native_loads()] if tool is not None else []
    missing: list[str] = []
    for name, version in loads:
        resolved = site.resolve(name, version)
        if resolved is None:
            missing.append(f"{name}/{version}")
        elif resolved.configuration.readme:
            found.append(_readme(resolved.configuration.readme))
    if missing:
        found.append(_readme(
            "This application has not been configured for this system yet. Contact the system's support to have "
            f"it set up. Could not load: {', '.join(missing)}. Pick the modules it needs below, if you know them."
        ))  # fmt: skip
    if (not loads or missing) and site.modules:
        found.append(
            ApplicationParameter(
                type="modules",
                name=MODULES_PARAMETER,
                optional=False,
                default_value=[],
                title="Modules",
                description="List of modules to load",
                supported_modules=[module.model_dump(mode="json", by_alias=True) for module in site.modules],
            )
        )
    return found


async def _account_picker(slurm: SlurmClient) -> ApplicationParameter:
    try:
        accounts = await slurm.user_accounts()
    except SlurmError:
        # The anchor offers "unknown" when it cannot tell; the job then runs under the product's account.
        accounts = ["unknown"]
    return ApplicationParameter(
        type="enumeration",
        name=ACCOUNT_PARAMETER,
        optional=False,
        title="Slurm account",
        description="The slurm account to use for this job.",
        options=[EnumOption(name=account, value=account) for account in accounts],
    )


def _readme(text: str) -> ApplicationParameter:
    return ApplicationParameter(type="readme", name=README_PARAMETER, optional=True, title="README", description=text)
