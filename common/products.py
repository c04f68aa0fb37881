"""The products ucim offers: machine types (compute, and where they run in Slurm) and storage.

One configured list of machine types serves three readers: the gateway (``retrieveProducts``,
and resolving a job's product to partition, QoS and resources), the operator (registering the
products with Core at start-up), and the docs.

Storage is fixed: one category ``storage`` with a product per kind of drive, ``home`` (a
user's home directory) and ``project`` (a project's group folder). By default the category
is free to use: a drive exists because the site gave the user an account or the project a
group, so UCloud need not grant it, and nothing is accounted. A site that accounts storage
registers it as not free (the operator's ``storage_accounted``): Core then grants it in GB
and the bridge measures each drive for the usage reported to Core.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from ucim.common.protocol import (
    AccountingUnit,
    FSSupport,
    FSSupportCollection,
    FSSupportFiles,
    FSSupportStats,
    JobSupport,
    ProductCategory,
    ProductReference,
    ProductV2,
    UniversalBackendSupport,
)
from ucim.common.resources import JobResources, SlurmPlacement


class MachineType(BaseModel):
    """One compute product (UCloud's "machine type") and its Slurm placement."""

    name: str = Field(min_length=1, description="product id, e.g. cpu-2")
    category: str = Field(min_length=1, description="product category, e.g. cpu")
    partition: str = Field(min_length=1)
    qos: str | None = None
    account: str | None = None
    cpu: int = Field(ge=1)
    memory_gigabytes: int = Field(ge=1)
    gpu: int = Field(default=0, ge=0)
    description: str = ""

    def reference(self, provider: str) -> ProductReference:
        return ProductReference(id=self.name, category=self.category, provider=provider)

    def placement(self) -> SlurmPlacement:
        return SlurmPlacement(partition=self.partition, qos=self.qos, account=self.account)

    def resources(self, nodes: int, time_limit_minutes: int | None) -> JobResources:
        # UCloud counts memory in GB; the anchor passes GB x 1000 as Slurm megabytes.
        return JobResources(
            nodes=nodes,
            cpus_per_node=self.cpu,
            memory_megabytes_per_node=self.memory_gigabytes * 1000,
            gpus_per_node=self.gpu or None,
            time_limit_minutes=time_limit_minutes,
        )

    def support(
        self, provider: str, *, web: bool = False, vnc: bool = False, time_extension: bool = False
    ) -> JobSupport:
        """What UCloud may do with jobs on this product: native batch jobs, their output followed, a terminal,
        and (when the gateway serves them) web interfaces and remote desktops.

        Core dials the follow websocket only for a product with ``native.logs`` (PROTOCOL-INTERACTIVE §1.1), and
        refuses ``interactiveSession`` SHELL, WEB or VNC (400 "... not supported by this provider") and shows no
        button for it unless ``terminal``, ``web`` or ``vnc`` is set; it refuses ``jobs/extend`` unless
        ``timeExtension`` is (core2 ``orchestrator/job.go``).
        """
        native = UniversalBackendSupport(
            enabled=True, logs=True, terminal=True, web=web, vnc=vnc, time_extension=time_extension
        )
        return JobSupport(product=self.reference(provider), native=native)

    def product(self, provider: str) -> ProductV2:
        """The product as registered with Core (``POST /api/products/v2``), accounted in core-hours."""
        return ProductV2(
            type="compute",
            product_type="COMPUTE",
            name=self.name,
            description=self.description or f"{self.cpu} CPU, {self.memory_gigabytes} GB on {self.partition}",
            category=ProductCategory(
                name=self.category,
                provider=provider,
                product_type="COMPUTE",
                accounting_unit=AccountingUnit(
                    name="Core", name_plural="Cores", floating_point=False, display_frequency_suffix=True
                ),
                accounting_frequency="PERIODIC_HOUR",
                # As IM2 registers them: sub-allocations of these core-hours allowed. core2 stores the flag as
                # sent (omitted = false); its own checks do not read it.
                allow_sub_allocations=True,
            ),
            price=self.cpu,
            cpu=self.cpu,
            memory_in_gigs=self.memory_gigabytes,
            gpu=self.gpu,
        )


DEFAULT_MACHINE_TYPES = [
    MachineType(name="cpu-1", category="cpu", partition="normal", cpu=1, memory_gigabytes=1),
    MachineType(name="cpu-2", category="cpu", partition="normal", cpu=2, memory_gigabytes=2),
    MachineType(name="short-1", category="cpu-short", partition="short", cpu=1, memory_gigabytes=1),
]


def find_machine(machines: list[MachineType], product: ProductReference) -> MachineType | None:
    return next((m for m in machines if m.name == product.id and m.category == product.category), None)


class StorageProduct(BaseModel):
    """One storage product: the product of every drive of one kind."""

    name: str = Field(min_length=1)
    category: str = Field(min_length=1)
    description: str = ""

    def reference(self, provider: str) -> ProductReference:
        return ProductReference(id=self.name, category=self.category, provider=provider)

    def product(self, provider: str, *, accounted: bool = False) -> ProductV2:
        """The product as registered with Core: a STORAGE category in GB, as IM2 shapes it.

        Free to use unless ``accounted``: then Core grants storage and ucim reports each drive's usage.
        """
        return ProductV2(
            type="storage",
            product_type="STORAGE",
            name=self.name,
            description=self.description,
            category=ProductCategory(
                name=self.category,
                provider=provider,
                product_type="STORAGE",
                accounting_unit=AccountingUnit(name=STORAGE_UNIT, name_plural=STORAGE_UNIT),
                accounting_frequency="ONCE",
                free_to_use=not accounted,
            ),
            price=1,
        )

    def support(self, provider: str) -> FSSupport:
        """What UCloud may do with these drives: what the user's instance serves, nothing more."""
        return FSSupport(
            product=self.reference(provider),
            stats=FSSupportStats(
                size_in_bytes=True,
                modified_at=True,
                created_at=True,
                accessed_at=True,
                unix_permissions=True,
                unix_owner=True,
                unix_group=True,
            ),
            # Drives are the site's accounts and groups: users cannot create, delete, rename or share them.
            collection=FSSupportCollection(),
            # openInTerminal: Core's UI offers "Open terminal" on folders (jobs/openTerminalInFolder).
            files=FSSupportFiles(trash_supported=True, open_in_terminal=True),
        )


STORAGE_CATEGORY = "storage"
# Storage is accounted in GB (10^9 bytes, as the anchor reads "GB").
STORAGE_UNIT = "GB"
STORAGE_UNIT_BYTES = 10**9
HOME_PRODUCT = StorageProduct(name="home", category=STORAGE_CATEGORY, description="Your home directory")
PROJECT_PRODUCT = StorageProduct(
    name="project", category=STORAGE_CATEGORY, description="The project's folder, shared by its UNIX group"
)
STORAGE_PRODUCTS = (HOME_PRODUCT, PROJECT_PRODUCT)


def storage_products(provider: str, *, accounted: bool = False) -> list[ProductV2]:
    """The storage products, as registered with Core next to the machine types."""
    return [storage.product(provider, accounted=accounted) for storage in STORAGE_PRODUCTS]


def storage_support(provider: str) -> list[FSSupport]:
    return [storage.support(provider) for storage in STORAGE_PRODUCTS]
