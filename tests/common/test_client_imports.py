"""Clients are leaves: importing a service's client loads no server code of any service.

Each client is imported in a fresh interpreter (a subprocess: this process has loaded servers
already), which then reports `sys.modules`. The agent, the trainer and the monitor import these
clients, so what a client loads is what they pay for at start-up (SQLite, a servicer, session
stores, TensorFlow) and what could break them when a server changes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.common.processes import REPO_ROOT

# Modules that only a server runs: servicers, stores, session and servable managers.
SERVER_MODULE_NAMES = ("server", "buffer", "storage", "sessions", "servables", "batching")
SERVICES = ("environment", "replay", "network")

_REPORT_MODULES = "import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"


def loaded_modules(module: str) -> set[str]:
    """The names in `sys.modules` of a fresh interpreter after `import module`."""
    result = subprocess.run([sys.executable, "-c", _REPORT_MODULES.format(module=module)],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


def server_modules(modules: set[str]) -> list[str]:
    """The server modules of any MuFleet service among `modules` (services.<name>.<server part>)."""
    return sorted(name for name in modules
                  if name.startswith("services.") and name.count(".") == 2
                  and name.rsplit(".", 1)[1] in SERVER_MODULE_NAMES)


def test_every_service_with_a_client_is_checked():
    clients = sorted(path.parent.name for path in (REPO_ROOT / "services").glob("*/client.py"))
    assert clients == sorted(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_a_client_loads_no_server_module_and_no_sqlite(service):
    modules = loaded_modules(f"services.{service}.client")
    assert f"services.{service}.client" in modules
    assert server_modules(modules) == []
    assert "sqlite3" not in modules


@pytest.mark.parametrize("service", ("environment", "replay"))
def test_the_clients_of_mufleet_protocols_load_no_tensorflow(service):
    modules = loaded_modules(f"services.{service}.client")
    assert sorted(name for name in modules if name.split(".")[0].startswith("tensorflow")) == []


def test_the_network_client_loads_no_model_code():
    # TensorFlow Serving's API protos import TensorFlow's own protos, so the network client
    # loads TensorFlow; what must not come with it is MuFleet's model code (the networks and
    # their SavedModel export), which only the trainer and the network server need.
    modules = loaded_modules("services.network.client")
    assert sorted(name for name in modules if name == "models" or name.startswith("models.")) == []
