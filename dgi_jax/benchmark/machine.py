"""One line naming the machine a figure comes from (benchmarks print it beside results)."""

import os
import platform

import jax


def machine_description() -> str:
  """CPU architecture and count, JAX version, platform and device count."""
  device = jax.devices()[0]
  return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__} on {device.platform} ({device.device_kind}), "
          f"{jax.device_count()} device(s)")
