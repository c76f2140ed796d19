"""snntorch_sparse: sparse surrogate-gradient backpropagation for snnTorch.

One-import switch: ``import snntorch_sparse as snn`` gives the sparse :class:`Leaky` and
:class:`Synaptic`, our :mod:`surrogate` (a superset of ``snntorch.surrogate``),
:func:`sparsify`, the fused whole-sequence layers :class:`SpikingLinear` and
:class:`SpikingConv2d`, and :func:`fuse`; every other name (``snn.Alpha``, ``snn.RLeaky``,
``snn.utils``, ``snn.functional``, ``snn.spikegen``, ``snn.backprop``, ...) is snnTorch's own.

Example::

    >>> import torch
    >>> import snntorch_sparse as snn
    >>> lif = snn.Leaky(beta=0.9, b_th=0.2)        # sparse
    >>> syn = snn.Synaptic(alpha=0.9, beta=0.8)    # sparse too
    >>> alpha = snn.Alpha(alpha=0.9, beta=0.8)     # snntorch.Alpha
    >>> spk, mem = lif(torch.rand(4, 8))
"""

__version__ = "0.1.0"

from . import _ops  # noqa: F401,E402  (loads the kernels, registers the ops)

import importlib as _importlib  # noqa: E402
import importlib.util as _importlib_util  # noqa: E402
import pkgutil as _pkgutil  # noqa: E402

import snntorch as _snntorch  # noqa: E402

from . import surrogate  # noqa: E402
from ._ops import empty_cache  # noqa: E402
from .convert import sparsify  # noqa: E402
from .fuse import fuse  # noqa: E402
from .leaky import Leaky  # noqa: E402
from .spiking_conv import SpikingConv2d  # noqa: E402
from .spiking_linear import SpikingLinear  # noqa: E402
from .surrogate import AdaptiveBand  # noqa: E402
from .synaptic import Synaptic  # noqa: E402

__all__ = ["AdaptiveBand", "Leaky", "SpikingConv2d", "SpikingLinear", "Synaptic", "empty_cache",
           "fuse", "sparsify",
           "surrogate"]


def __getattr__(name):
    """Names we do not define: our own submodules first, then snnTorch's attributes
    and submodules (``utils``, ``functional``, ...)."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _importlib_util.find_spec(f"{__name__}.{name}") is not None:
        return _importlib.import_module(f"{__name__}.{name}")
    try:
        return getattr(_snntorch, name)
    except AttributeError:
        pass
    if _importlib_util.find_spec(f"snntorch.{name}") is not None:
        return _importlib.import_module(f"snntorch.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r} "
                         "(nor has snntorch)")


def __dir__():
    ours = {m.name for m in _pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    snn = set(dir(_snntorch)) | {m.name for m in _pkgutil.iter_modules(_snntorch.__path__)}
    public = {n for n in globals() if not n.startswith("_")} | {"__version__"}
    return sorted(public | ours | {n for n in snn if not n.startswith("_")})
