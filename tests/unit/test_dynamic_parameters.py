"""jobs/requestDynamicParameters: what the instance adds to an application's form (PROTOCOL-APPS §9)."""

from __future__ import annotations

import json
from pathlib import Path

from ucim.common.protocol import dump
from ucim.common.slurm import SlurmClient
from ucim.common.slurm_errors import SlurmUnavailableError
from ucim.user_sidecar.dynamic_parameters import DynamicParametersRequest, dynamic_parameters
from ucim.user_sidecar.load_instructions import AppConfiguration, SiteApplications, load_modules

FIXTURES = Path(__file__).parent / "fixtures"
# What core2 sent for hello-py (load: python 3.11), recorded (fixtures/README.md).
REQUEST = DynamicParametersRequest.model_validate(
    json.loads((FIXTURES / "core2_request_dynamic_parameters.json").read_text())
)
MODULES = load_modules(FIXTURES / "lmod" / "jsonSoftwarePage.json")


class FakeSlurm(SlurmClient):
    def __init__(self, accounts: list[str] | None) -> None:
        super().__init__()
        self.accounts = accounts

    async def user_accounts(self) -> list[str]:
        if self.accounts is None:
            raise SlurmUnavailableError("sacctmgr did not answer")
        return self.accounts


def site(*, python: bool, readme: str = "") -> SiteApplications:
    apps = {"python": (AppConfiguration(versions=("3.11.4",), load="module load Python", readme=readme),)}
    return SiteApplications(applications=apps if python else {}, modules=MODULES)


async def test_a_configured_application_gets_its_readme_and_no_picker() -> None:
    found = await dynamic_parameters(
        REQUEST, site(python=True, readme="Python 3.11"), FakeSlurm([]), account_picker=False
    )
    assert [(p.type, p.name, p.description) for p in found] == [("readme", "__readme__", "Python 3.11")]


async def test_an_application_the_site_lacks_gets_a_readme_and_the_module_picker() -> None:
    found = await dynamic_parameters(REQUEST, site(python=False), FakeSlurm([]), account_picker=False)
    assert [(p.type, p.name) for p in found] == [("readme", "__readme__"), ("modules", "_injected_modules")]
    assert "Could not load: python/3.11" in found[0].description
    wire = dump(found[1])
    assert wire["defaultValue"] == [] and wire["optional"] is False and wire["title"] == "Modules"
    assert wire["supportedModules"] and {"name", "description", "shortDescription"} <= set(wire["supportedModules"][0])


async def test_the_account_picker_lists_the_users_accounts_first() -> None:
    slurm = FakeSlurm(["alice_cpu", "shared"])
    found = await dynamic_parameters(REQUEST, site(python=True), slurm, account_picker=True)
    picker = found[0]
    assert (picker.type, picker.name, picker.title) == ("enumeration", "_injected_slurmAccount", "Slurm account")
    assert [(o.name, o.value) for o in picker.options or []] == [("alice_cpu", "alice_cpu"), ("shared", "shared")]


async def test_without_slurm_the_picker_offers_unknown_as_the_anchor_does() -> None:
    found = await dynamic_parameters(REQUEST, site(python=True), FakeSlurm(None), account_picker=True)
    assert [o.value for o in found[0].options or []] == ["unknown"]
