"""Building modules without memory: every tensor on the meta device, whatever device the module asks for."""
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors


class OnMetaDevice(TorchFunctionMode):
    """Every tensor factory call makes a meta tensor (no memory), even one naming a device: SAT builds its
    layers with an explicit `device=cpu`, which the plain `torch.device("meta")` context would honour."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _device_constructors():
            kwargs["device"] = "meta"
        return func(*args, **kwargs)
