"""Registry of the reference models of the documented architectures (shared/ARCHITECTURES.md).

Each model module (``reference/models/<name>.py``) registers its models when it is imported;
the registry imports every module of this package (except ``flops`` and names starting with an
underscore, which are helpers) on first use, so importing ``reference.models`` stays cheap, a new
model file needs no edit here, and a module can ``from reference.models import register``
without an import cycle.

    from reference import models
    models.list_models()                         # ['preact_resnet110', ..., 'resnet18', ...]
    m = models.create("resnet50")                # the standard configuration
    m = models.create("resnet50", **models.get("resnet50").small_config)   # CPU-sized
    m, x = models.create_small("resnet50", batch=2)                        # the same + an input

A registered entry (``ModelSpec``) carries the factory, a small configuration for CPU tests (its
dropout, where a model has any, is 0 so that train-mode runs of one model are deterministic),
an ``example_input(batch, config) -> tensor`` for a given configuration, the cvkernels kernel
families the model exercises (the ARCHITECTURES.md abbreviations: BNR, DW, GC, ...) and the
figures the documents publish (``Figure``: value, where it is printed, relative tolerance, and
the configuration and input it refers to).

Nothing here imports cvkernels, torchvision or timm.
"""
import dataclasses
import importlib
import os
import pkgutil
from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ["Figure", "ModelSpec", "register", "register_unmodelled", "list_models", "unmodelled", "get", "create",
           "create_small", "example_input"]

# modules of this package that hold helpers, not models
_HELPER_MODULES = ("flops",)


def _model_modules():
    """The model modules of this package, sorted (registration order does not matter)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(info.name for info in pkgutil.iter_modules([here])
                  if not info.name.startswith("_") and info.name not in _HELPER_MODULES)


@dataclasses.dataclass(frozen=True)
class Figure:
    """A published figure a reference model is checked against.

    value: the number as printed (params as a count, FLOPs as multiply-adds);
    source: where the seed documents print it ("K l.1330") or "paper: ..." / "torchvision: ...";
    rtol: the accepted relative deviation (documents round: 25.6M is +-0.2%, 1.7M +-3%);
    config: overrides of the standard configuration the figure refers to;
    input_shape: the input the figure refers to (FLOPs), None where it does not depend on one;
    note: what is and is not counted.
    """
    value: float
    source: str
    rtol: float = 0.02
    config: Dict[str, Any] = dataclasses.field(default_factory=dict)
    input_shape: Optional[Tuple[int, ...]] = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[..., Any]
    small_config: Dict[str, Any]
    example_input: Callable[[int, Dict[str, Any]], Any]
    families: Tuple[str, ...] = ()
    figures: Dict[str, Figure] = dataclasses.field(default_factory=dict)
    doc: str = ""


_REGISTRY: Dict[str, ModelSpec] = {}
_UNMODELLED: Dict[str, str] = {}
_loaded = False


def register(name, factory, small_config=None, example_input=None, families=(), figures=None, doc=""):
    """Adds a model. ``figures`` values may be ``Figure``s or ``(value, source)`` tuples."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if example_input is None:
        raise ValueError(f"model {name!r}: example_input(batch, config) is required")
    figs = {}
    for key, fig in (figures or {}).items():
        figs[key] = fig if isinstance(fig, Figure) else Figure(*fig)
    _REGISTRY[name] = ModelSpec(name, factory, dict(small_config or {}), example_input, tuple(families),
                                figs, doc or (factory.__doc__ or "").strip().split("\n")[0])
    return _REGISTRY[name]


def register_unmodelled(name, reason):
    """Records an architecture of ARCHITECTURES.md that has no reference model, and why not
    (e.g. a family the documents name without any configuration anywhere)."""
    if name in _UNMODELLED or name in _REGISTRY:
        raise ValueError(f"architecture {name!r} is already recorded")
    if not reason:
        raise ValueError(f"architecture {name!r}: a reason is required")
    _UNMODELLED[name] = reason


def unmodelled():
    """{architecture: reason} for the documented architectures without a reference model."""
    _load()
    return dict(sorted(_UNMODELLED.items()))


def _load():
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _model_modules():
            importlib.import_module(f"{__name__}.{module}")


def list_models(family=None):
    """Sorted names of the registered models (only those exercising ``family`` if given)."""
    _load()
    return sorted(n for n, s in _REGISTRY.items() if family is None or family in s.families)


def get(name):
    """The ``ModelSpec`` of a registered model."""
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def create(name, **config):
    """Builds model ``name``; ``config`` overrides the factory's defaults (the standard config)."""
    return get(name).factory(**config)


def example_input(name, batch=2, config=None):
    """A random input for model ``name`` built with ``config`` (default: its small config)."""
    spec = get(name)
    return spec.example_input(batch, spec.small_config if config is None else dict(config))


def create_small(name, batch=2, **overrides):
    """(model, input) at the small CPU configuration, with ``overrides`` applied on top."""
    spec = get(name)
    config = {**spec.small_config, **overrides}
    return spec.factory(**config), spec.example_input(batch, config)
