"""Machine types: the compute products ucim offers, and where they run in Slurm.

One configured list serves three readers: the gateway (``retrieveProducts``, and
resolving a job's product to partition, QoS and resources), the operator
(registering the products with Core at start-up), and the docs.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from ucim.common.protocol import (
    AccountingUnit,
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

    def support(self, provider: str) -> JobSupport:
        """What UCloud may do with jobs on this product: native batch jobs, nothing interactive yet."""
        return JobSupport(product=self.reference(provider), native=UniversalBackendSupport(enabled=True))

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
