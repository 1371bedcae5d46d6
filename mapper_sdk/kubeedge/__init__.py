"""KubeEdge mode: a Mapperkit mapper driven by edgecore over the DMI v1beta1 gRPC API.

Needs the ``kubeedge`` extra (``pip install mapperkit[kubeedge]``: grpcio and
protobuf). The parts:

* :mod:`.convert`: DMI Device/DeviceModel messages to and from the YAML-shaped
  documents Mapperkit's loader reads;
* :mod:`.twin`: :class:`DmiTwinReporter`, twin and state reports batched per
  device within edgecore's rate limit;
* :mod:`.client`: :class:`DmiClient` and the :class:`Registrar` that keeps the
  mapper registered across edgecore restarts;
* :mod:`.catalog` and :mod:`.server`: the ``DeviceMapperService`` edgecore calls;
* :mod:`.runner`: :class:`KubeEdgeMapper` and ``mapperkit run --kubeedge``;
* ``v1beta1/``: stubs generated from ``proto/api.proto`` (see :mod:`.regenerate`).
"""

try:
    import grpc  # noqa: F401
    from google.protobuf import any_pb2  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "KubeEdge mode needs grpcio and protobuf: pip install 'mapperkit[kubeedge]'"
    ) from exc

from .catalog import DeviceCatalog, ModelMissing
from .client import DmiClient, Registrar
from .convert import decode_any, decode_config, device_to_doc, model_to_doc
from .runner import (
    KubeEdgeMapper,
    KubeEdgeOptions,
    add_kubeedge_options,
    options_from_args,
    run_kubeedge,
)
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
