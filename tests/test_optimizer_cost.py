"""cost.optimizer: the optimizer step's roofline and a profile's measured fit."""

from __future__ import annotations

import pytest
import yaml

from cost.devices import catalog_device, resolve_device
from cost.optimizer import UPDATE_TRAFFIC, optimizer_step_seconds


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_roofline_step(optimizer):
    dev = catalog_device("A100-80GB")
    nbytes, ops = UPDATE_TRAFFIC[optimizer]
    rate = dev.bandwidth_GBps * 1e9 * dev.memory_efficiency
    t = optimizer_step_seconds(dev, 10**8, 40, optimizer)
    assert t == pytest.approx(40 * ops * dev.launch_overhead_us * 1e-6 + 10**8 * nbytes / rate)
    assert optimizer_step_seconds(dev, 0, 0, optimizer) == 0.0


def test_adam_costs_more_than_sgd():
    dev = catalog_device("A100-80GB")
    assert optimizer_step_seconds(dev, 10**7, 10, "adam") > optimizer_step_seconds(
        dev, 10**7, 10, "sgd"
    )


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer"):
        optimizer_step_seconds(catalog_device("A100-80GB"), 1, 1, "lamb")


def test_profile_fit_replaces_the_roofline(tmp_path):
    profile = {
        "schema_version": 1,
        "device": {
            "name": "cpu",
            "peak_tflops": {"fp32": 0.1},
            "memory_GB": 8,
            "bandwidth_GBps": 50,
            "launch_overhead_us": 2,
            "compute_efficiency": 0.9,
            "memory_efficiency": 1.0,
            "half_efficiency_flops": 1e5,
        },
        "optimizer": {"adam": {"per_tensor_us": 30.0, "per_param_ns": 2.0}},
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(profile))
    dev = resolve_device({"profile": str(path)})
    assert optimizer_step_seconds(dev, 1000, 3, "adam") == pytest.approx(3 * 30e-6 + 1000 * 2e-9)
    # no fit for sgd in the profile: roofline on the profile's device figures
    assert optimizer_step_seconds(dev, 1000, 3, "sgd") == pytest.approx(
        3 * 1 * 2e-6 + 1000 * 12 / 50e9
    )
