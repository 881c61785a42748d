"""A resolved Placement (cnnbench.core.placement: device, precision, layout, decided there and nowhere else)
applied to TensorFlow: the Keras precision policy, TF32, the devices, the distribution strategy, and
the device synchronisation the measured loop needs before it reads a clock.

TensorFlow's state here is process-wide (the Keras policy, the logical CPU devices): `configure` runs
once, first, before TensorFlow has started its runtime.
"""

from __future__ import annotations

from cnnbench.core.errors import UsageError
from cnnbench.core.placement import Placement
from cnnbench.backends.tensorflow import require

# Keras mixed precision (keras.mixed_precision, "Mixed precision" guide): variables stay float32, layers
# compute in the reduced type, as PyTorch's autocast does.
POLICIES = {"fp32": "float32", "tf32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}


def configure(placement: Placement, replicas: int = 1):
    """Set the Keras policy and TF32 for the precision, make `replicas` devices exist, and return the
    strategy every model, optimizer and step is built under: MirroredStrategy over `replicas` devices
    (the original's one-node data parallelism; on a CPU its cores split into logical devices, which checks
    the accounting, not a speed-up), OneDeviceStrategy for one."""
    tf = require()
    import keras

    devices = _devices(tf, placement, replicas)
    keras.mixed_precision.set_global_policy(POLICIES.get(placement.precision, "float32"))
    # TensorFlow runs float32 matrix products in TF32 on Ampere and later unless told not to: fp32 means fp32.
    tf.config.experimental.enable_tensor_float_32_execution(placement.precision == "tf32")
    if replicas == 1:
        return tf.distribute.OneDeviceStrategy(devices[0])
    return tf.distribute.MirroredStrategy(devices=devices)


def _devices(tf, placement: Placement, replicas: int) -> list[str]:
    if placement.device.type == "cuda":
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            raise UsageError("this TensorFlow sees no GPU (tensorflow-cpu, or a CUDA it was not built for): install "
                             "tensorflow[and-cuda] or use --device cpu")
        first = placement.device.index or 0
        if first + replicas > len(gpus):
            raise UsageError(f"--num-accelerators {replicas} needs {replicas} GPUs from cuda:{first}; TensorFlow sees "
                             f"{len(gpus)}")
        return [f"/gpu:{first + i}" for i in range(replicas)]
    if replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    return [f"/cpu:{i}" for i in range(replicas)]


def synchronize() -> None:
    """Wait until every device has finished its queued work (TensorFlow's GPU ops run asynchronously)."""
    require().test.experimental.sync_devices()


def reset() -> None:
    """Back to float32 (the Keras policy is process-wide: a test or a second run must not inherit it)."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
