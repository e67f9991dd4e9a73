"""A local, loopback iMednet EDC API for demos, tests and benchmarks (no Prefect imports)."""

from imednet_flows.emulator.faults import FaultRule
from imednet_flows.emulator.handle import (
    DEMO_API_KEY,
    DEMO_SECURITY_KEY,
    Emulator,
    EmulatorConfig,
)
from imednet_flows.emulator.seed import StudyData, StudySpec, generate_study
from imednet_flows.emulator.server import (
    EmulatorClient,
    EmulatorServer,
    running_emulator,
)

__all__ = [
    "DEMO_API_KEY",
    "DEMO_SECURITY_KEY",
    "Emulator",
    "EmulatorClient",
    "EmulatorConfig",
    "EmulatorServer",
    "FaultRule",
    "StudyData",
    "StudySpec",
    "generate_study",
    "running_emulator",
]
