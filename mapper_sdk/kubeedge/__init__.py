"""KubeEdge mode: a Mapperkit mapper driven by edgecore over the DMI v1beta1 gRPC API.

Needs the ``kubeedge`` extra (``pip install mapperkit[kubeedge]``: grpcio and
protobuf), except :mod:`.options`, which ``mapperkit run`` imports to offer
``--kubeedge`` either way. The parts:

* :mod:`.convert`: DMI Device/DeviceModel messages to and from the YAML-shaped
  documents Mapperkit's loader reads;
* :mod:`.twin`: :class:`DmiTwinReporter`, twin and state reports batched per
  device within edgecore's rate limit;
* :mod:`.client`: :class:`DmiClient` and the :class:`Registrar` that keeps the
  mapper registered across edgecore restarts;
* :mod:`.catalog` and :mod:`.server`: the ``DeviceMapperService`` edgecore calls;
* :mod:`.runner`: :class:`KubeEdgeMapper` and ``mapperkit run --kubeedge``;
* ``v1beta1/``: stubs generated from ``proto/api.proto`` (see :mod:`.regenerate`).

The names below are imported on first use, so importing this package (or
:mod:`.options`) does not need grpc.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .options import add_kubeedge_options

if TYPE_CHECKING:
    from .catalog import DeviceCatalog, ModelMissing
    from .client import DmiClient, Registrar
    from .convert import decode_any, decode_config, device_to_doc, model_to_doc
    from .runner import KubeEdgeMapper, KubeEdgeOptions, options_from_args, run_kubeedge
    from .server import DmiServer
    from .twin import (
        DmiTwinReporter,
        EdgecoreRejected,
        EdgecoreUnavailable,
        ReportBudget,
        TokenBucket,
    )

__all__ = [
    "DeviceCatalog",
    "DmiClient",
    "DmiServer",
    "DmiTwinReporter",
    "EdgecoreRejected",
    "EdgecoreUnavailable",
    "KubeEdgeMapper",
    "KubeEdgeOptions",
    "ModelMissing",
    "Registrar",
    "ReportBudget",
    "TokenBucket",
    "add_kubeedge_options",
    "decode_any",
    "decode_config",
    "device_to_doc",
    "model_to_doc",
    "options_from_args",
    "run_kubeedge",
]

_WHERE = {
    "DeviceCatalog": "catalog",
    "ModelMissing": "catalog",
    "DmiClient": "client",
    "Registrar": "client",
    "decode_any": "convert",
    "decode_config": "convert",
    "device_to_doc": "convert",
    "model_to_doc": "convert",
    "KubeEdgeMapper": "runner",
    "KubeEdgeOptions": "runner",
    "options_from_args": "runner",
    "run_kubeedge": "runner",
    "DmiServer": "server",
    "DmiTwinReporter": "twin",
    "EdgecoreRejected": "twin",
    "EdgecoreUnavailable": "twin",
    "ReportBudget": "twin",
    "TokenBucket": "twin",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import _deps  # noqa: F401 - the installation hint when grpc is missing

    return getattr(import_module(f".{module}", __name__), name)
