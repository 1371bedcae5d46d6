"""The devices and models edgecore hands to a mapper, kept in step with the Mapper.

:class:`DeviceCatalog` is what the DMI service and the registration loop act
on. It converts each Device and DeviceModel message (:mod:`.convert`), loads
it with Mapperkit's own loader (so the driver's config classes validate it as
they validate files), and starts, updates or stops the device in the
:class:`~mapper_sdk.runtime.Mapper`:

* a changed Device whose only difference is desired values keeps running; the
  new desired values are written by its worker (``Mapper.update_device``);
* any other change restarts that device alone;
* desired values of writable properties are written whenever a device
  (re)starts, as KubeEdge's mappers do;
* a model update re-resolves the devices that use it;
* a ``MapperRegister`` answer (:meth:`DeviceCatalog.sync`) is edgecore's whole
  truth for this protocol: devices it no longer lists are stopped.

A Device or model that cannot be loaded is refused with an error naming the
field, and nothing that runs is touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from ..codec import format_text
from ..driver import Driver, Reading
from ..errors import ConfigError, MapperError
from ..model import DeviceSpec, load_objects
from ..runtime import Mapper
from ..runtime.mapper import load_reporters
from ..runtime.reporters.base import Reporter, push_targets
from ..runtime.twin import DesiredValue
from .convert import DEFAULT_NAMESPACE, device_to_doc, model_to_doc
from .twin import DmiTwinReporter
from .v1beta1 import api_pb2

__all__ = ["DeviceCatalog", "ModelMissing"]

log = logging.getLogger("mapper_sdk.kubeedge")


class ModelMissing(ConfigError):
    """A Device names a DeviceModel this mapper has not been given."""


def _ns(value: str) -> str:
    return value or DEFAULT_NAMESPACE


class DeviceCatalog:
    """Devices and models from edgecore, applied to a running :class:`Mapper`.

    Args:
        mapper: the running mapper.
        protocol: the one protocol this mapper serves.
        driver: its driver class.
        reporter: the DMI reporter (its queued reports of removed devices are dropped).
        model_wait: seconds a Device waits for its model before it is refused
            (edgecore normally sends the model first).
        read_deadline: seconds a ``GetDevice`` may spend on live reads (edgecore
            gives the call 10 s).
    """

    def __init__(
        self,
        mapper: Mapper,
        protocol: str,
        driver: type[Driver[Any, Any]],
        reporter: DmiTwinReporter | None = None,
        *,
        model_wait: float = 3.0,
        read_deadline: float = 8.0,
    ) -> None:
        self.mapper = mapper
        self.protocol = protocol
        self.driver = driver
        self.reporter = reporter
        self.model_wait = model_wait
        self.read_deadline = read_deadline
        self.models: dict[tuple[str, str], api_pb2.DeviceModel] = {}
        self._reporter_classes: dict[str, type[Reporter]] | None = None
        self._docs: dict[str, dict[str, Any]] = {}
        """The document each served device was loaded from (to re-resolve on a model change)."""
        self._cond = asyncio.Condition()

    # ---- resolving ---------------------------------------------------------------------
    def _find_model(self, namespace: str, name: str) -> dict[str, Any] | None:
        model = self.models.get((namespace, name))
        if model is None:
            # Edgecores that predate namespaced models leave the namespace empty.
            same_name = [m for (_, n), m in self.models.items() if n == name]
            if len(same_name) != 1:
                return None
            model = same_name[0]
        return model_to_doc(model, namespace=namespace)

    def _resolve(self, doc: dict[str, Any], model: dict[str, Any]) -> DeviceSpec[Any, Any]:
        meta = doc["metadata"]
        source = f"DMI Device {meta['namespace']}/{meta['name']}"
        protocol = doc["spec"]["protocol"]["protocolName"]
        if protocol != self.protocol:
            raise ConfigError(
                f"spec.protocol.protocolName: this mapper serves protocol {self.protocol!r}, "
                f"the device uses {protocol!r}",
                location=source,
            )
        inventory = load_objects(
            [model, doc], source, {self.protocol: self.driver}, missing_driver="error"
        )
        return inventory.devices[0]

    async def _model_for(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The device's model, waiting up to ``model_wait`` for it (lock held)."""
        ns = doc["metadata"]["namespace"]
        name = doc["spec"]["deviceModelRef"]["name"]
        model = self._find_model(ns, name)
        if model is None:
            try:
                async with asyncio.timeout(self.model_wait):
                    await self._cond.wait_for(lambda: self._find_model(ns, name) is not None)
            except TimeoutError:
                raise ModelMissing(
                    f"spec.deviceModelRef.name: DeviceModel {ns}/{name} was not given to this "
                    f"mapper within {self.model_wait:g} s",
                    location=f"DMI Device {ns}/{doc['metadata']['name']}",
                ) from None
            model = self._find_model(ns, name)
            assert model is not None
        return model

    # ---- applying ----------------------------------------------------------------------
    def _check_sinks(self, spec: DeviceSpec[Any, Any]) -> None:
        """Refuse unusable ``pushMethod`` sinks before a running device is replaced."""
        targets = [(p, t) for p in spec.properties for t in push_targets(p.push_method)]
        if not targets:
            return
        if self._reporter_classes is None:
            self._reporter_classes = load_reporters()
        for prop, (kind, path, config) in targets:
            where = f"{spec.source}: spec.properties[{prop.index}].{path}"
            cls = self._reporter_classes.get(kind)
            if cls is None:
                installed = ", ".join(sorted(self._reporter_classes)) or "none"
                raise ConfigError(
                    f"no reporter installed for {kind!r} (installed: {installed})", location=where
                )
            try:
                cls.validate(config)
            except ConfigError as exc:
                raise ConfigError(exc.message, location=where) from None

    async def _apply(self, spec: DeviceSpec[Any, Any]) -> None:
        self._check_sinks(spec)
        before = self.mapper.workers.get(spec.id)
        await self.mapper.update_device(spec)
        worker = self.mapper.workers[spec.id]
        if worker is not before:
            for prop in spec.properties:
                if prop.desired is not None and prop.writable:
                    worker.want(prop.name, DesiredValue(prop.desired, None))

    async def _remove(self, device_id: str) -> None:
        await self.mapper.remove_device(device_id)
        self._docs.pop(device_id, None)
        if self.reporter is not None:
            self.reporter.forget(device_id)

    # ---- DMI operations ----------------------------------------------------------------
    async def register_device(self, device: api_pb2.Device) -> DeviceSpec[Any, Any]:
        """``RegisterDevice``: start serving a device (a changed one is updated).

        Raises:
            ConfigError: the device cannot be loaded (:class:`ModelMissing` when
                its model never came).
        """
        doc = device_to_doc(device)
        async with self._cond:
            spec = self._resolve(doc, await self._model_for(doc))
            await self._apply(spec)
            self._docs[spec.id] = doc
        log.info("device=%s event=dmi-registered", spec.id)
        return spec

    async def update_device(self, device: api_pb2.Device) -> DeviceSpec[Any, Any]:
        """``UpdateDevice``: serve a changed definition (desired values without a restart)."""
        doc = device_to_doc(device)
        async with self._cond:
            spec = self._resolve(doc, await self._model_for(doc))
            await self._apply(spec)
            self._docs[spec.id] = doc
        return spec

    async def remove_device(self, name: str, namespace: str) -> None:
        """``RemoveDevice``: stop serving a device. ``KeyError`` if it is not served."""
        device_id = f"{_ns(namespace)}/{name}"
        async with self._cond:
            if device_id not in self.mapper.workers:
                raise KeyError(device_id)
            await self._remove(device_id)

    async def create_model(self, model: api_pb2.DeviceModel) -> tuple[str, str]:
        """``CreateDeviceModel`` (an existing model is replaced): ``(namespace, name)``."""
        key = (_ns(model.namespace), model.name)
        self._check_model(model)
        async with self._cond:
            existed = key in self.models
            self.models[key] = model
            self._cond.notify_all()
            if existed:
                await self._refresh(key)
        return key

    async def update_model(self, model: api_pb2.DeviceModel) -> None:
        """``UpdateDeviceModel``: ``KeyError`` if the model is unknown."""
        key = (_ns(model.namespace), model.name)
        self._check_model(model)
        async with self._cond:
            if key not in self.models:
                raise KeyError(f"{key[0]}/{key[1]}")
            self.models[key] = model
            await self._refresh(key)

    async def remove_model(self, name: str, namespace: str) -> None:
        """``RemoveDeviceModel``: forget a model (devices that use it keep running)."""
        async with self._cond:
            self.models.pop((_ns(namespace), name), None)

    @staticmethod
    def _check_model(model: api_pb2.DeviceModel) -> None:
        doc = model_to_doc(model)
        load_objects([doc], f"DMI DeviceModel {doc['metadata']['namespace']}/{model.name}")

    async def _refresh(self, key: tuple[str, str]) -> None:
        """Re-resolve the served devices of a changed model (lock held)."""
        ns, name = key
        for worker in list(self.mapper.workers.values()):
            spec = worker.spec
            if spec.namespace != ns or spec.model != name:
                continue
            doc = self._docs.get(spec.id)
            if doc is None:
                continue
            try:
                new = self._resolve(doc, self._find_model(ns, name) or {})
            except ConfigError as exc:
                log.error("device=%s event=model-update-refused error=%r", spec.id, str(exc))
                continue
            await self._apply(new)

    async def sync(self, response: api_pb2.MapperRegisterResponse) -> None:
        """Make the served devices those of a ``MapperRegister`` answer."""
        async with self._cond:
            for model in response.modelList:
                self.models[(_ns(model.namespace), model.name)] = model
            self._cond.notify_all()
            wanted: dict[str, DeviceSpec[Any, Any]] = {}
            docs: dict[str, dict[str, Any]] = {}
            refused: set[str] = set()
            for device in response.deviceList:
                device_id = f"{_ns(device.namespace)}/{device.name}"
                try:
                    doc = device_to_doc(device)
                    model = self._find_model(
                        doc["metadata"]["namespace"], device.spec.deviceModelReference
                    )
                    if model is None:
                        raise ModelMissing(
                            f"DeviceModel {device.spec.deviceModelReference!r} is not in the "
                            "registration answer",
                            location=f"DMI Device {device_id}",
                        )
                    wanted[device_id] = self._resolve(doc, model)
                    docs[device_id] = doc
                except ConfigError as exc:
                    refused.add(device_id)
                    log.error("device=%s event=refused error=%r", device_id, str(exc))
            for device_id in [d for d in self.mapper.workers if d not in wanted]:
                if device_id in refused:
                    continue  # keep the running definition of a device now refused
                await self._remove(device_id)
                log.info("device=%s event=dmi-removed reason='not listed by edgecore'", device_id)
            for device_id, spec in wanted.items():
                try:
                    await self._apply(spec)
                except ConfigError as exc:
                    log.error("device=%s event=refused error=%r", device_id, str(exc))
                    continue
                self._docs[device_id] = docs[device_id]

    async def get_twins(self, name: str, namespace: str) -> api_pb2.DeviceStatus:
        """``GetDevice``: every property read now (the last value when a read fails)."""
        device_id = f"{_ns(namespace)}/{name}"
        worker = self.mapper.workers.get(device_id)
        if worker is None:
            raise KeyError(device_id)
        status = api_pb2.DeviceStatus(
            reportToCloud=worker.spec.state_report.report_to_cloud,
            reportCycle=worker.spec.state_report.report_cycle_ms,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_deadline
        for prop in worker.spec.properties:
            ptype = prop.type.value
            try:
                async with asyncio.timeout_at(deadline):
                    reading = await self.mapper.read(device_id, prop.name)
            except (MapperError, TimeoutError, OSError) as exc:
                reading = Reading.bad(str(exc) or type(exc).__name__)
            twin = status.twins.add(propertyName=prop.name)
            twin.observedDesired.value = prop.desired or ""
            twin.observedDesired.metadata["type"] = ptype
            reported = twin.reported
            reported.metadata["type"] = ptype
            if reading.ok and reading.value is not None:
                reported.value = format_text(reading.value, prop.type)
                reported.metadata["timestamp"] = str(reading.source_timestamp or reading.timestamp)
                continue
            reported.metadata["error"] = reading.error or "read failed"
            latest = worker.latest(prop.name)
            if latest is not None:
                value, last = latest
                reported.value = format_text(value, prop.type)
                reported.metadata["timestamp"] = str(last.source_timestamp or last.timestamp)
                reported.metadata["quality"] = "stale"
            else:
                reported.metadata["quality"] = "bad"
        return status

    @property
    def device_ids(self) -> Iterable[str]:
        return list(self.mapper.workers)
