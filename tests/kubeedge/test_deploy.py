"""deploy/: manifests valid for Kubernetes and KubeEdge, devices valid for Mapperkit.

Kubernetes' own kinds are checked with kubernetes-validate (the API server's
OpenAPI schemas, shipped with the package: no network), in strict mode so a
misspelt field is an error. Devices and DeviceModels are checked against the
openAPIV3Schema of deploy/crds, made strict the way the API server prunes: an
object that declares its properties takes no others unless it keeps unknown
fields (``x-kubernetes-preserve-unknown-fields``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from mapper_sdk.kubeedge import add_kubeedge_options, options_from_args
from mapper_sdk.kubeedge.convert import device_to_doc, device_to_proto, model_to_doc, model_to_proto
from mapper_sdk.model import load_files, load_objects, load_text
from mapper_sdk.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").rglob("*.yaml"))
CRDS = sorted((DEPLOY / "crds").glob("*.yaml"))
DEVICE_FILES = sorted((DEPLOY / "kubernetes" / "devices").glob("*.yaml"))
K8S_VERSION = kubernetes_validate.latest_version()
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in MANIFESTS + CRDS:
        for doc in documents(path):
            yield path, doc


def _strict(schema: dict[str, Any], top: bool = True) -> dict[str, Any]:
    out = dict(schema)
    for key in ("properties",):
        if key in out:
            out[key] = {
                name: sub if (top and name == "metadata") else _strict(sub, top=False)
                for name, sub in out[key].items()
            }
    if "items" in out:
        out["items"] = _strict(out["items"], top=False)
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"], top=False)
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def crd_validators() -> dict[tuple[str, str], jsonschema.Validator]:
    validators: dict[tuple[str, str], jsonschema.Validator] = {}
    for path in CRDS:
        for crd in documents(path):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                cls = jsonschema.validators.validator_for(
                    schema, default=jsonschema.Draft7Validator
                )
                cls.check_schema(schema)
                validators[(f"{group}/{version['name']}", kind)] = cls(schema)
    return validators


VALIDATORS = crd_validators()


def test_there_is_something_to_check() -> None:
    kinds = {doc["kind"] for _, doc in all_documents()}
    assert {"ConfigMap", "Deployment", "PersistentVolumeClaim", "Device", "DeviceModel"} <= kinds
    assert {"CustomResourceDefinition"} <= kinds
    assert {
        ("devices.kubeedge.io/v1beta1", "Device"),
        ("devices.kubeedge.io/v1beta1", "DeviceModel"),
    } <= set(VALIDATORS)


@pytest.mark.parametrize("path", MANIFESTS + CRDS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_validates(path: Path) -> None:
    for doc in documents(path):
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in VALIDATORS:
            errors = sorted(VALIDATORS[key].iter_errors(doc), key=lambda e: list(e.path))
            assert not errors, "; ".join(
                f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors
            )
            assert DNS_SUBDOMAIN.match(doc["metadata"]["name"])
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_checks_catch_mistakes() -> None:
    (device,) = [d for d in documents(DEVICE_FILES[0]) if d["kind"] == "Device"]
    device["spec"]["properties"][0]["reportcycle"] = 1000  # misspelt
    assert list(VALIDATORS[("devices.kubeedge.io/v1beta1", "Device")].iter_errors(device))
    (deployment,) = [
        d
        for d in documents(DEPLOY / "kubernetes/kubeedge/mapper-modbus.yaml")
        if d["kind"] == "Deployment"
    ]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_example_devices_load_with_the_drivers() -> None:
    inventory = load_files(DEVICE_FILES, Registry(), missing_driver="error")
    assert {d.protocol for d in inventory.devices} == {"modbus", "opcua", "ble"}
    for device in inventory.devices:
        assert device.node_name == "edge-node-1"
        assert all(p.report_to_cloud for p in device.properties)
        assert device.state_report.report_to_cloud


@pytest.mark.parametrize("path", DEVICE_FILES, ids=lambda p: p.name)
def test_example_devices_survive_the_trip_through_dmi(path: Path) -> None:
    registry = Registry()
    docs = documents(path)
    models = {d["metadata"]["name"]: d for d in docs if d["kind"] == "DeviceModel"}
    direct = load_files([path], registry, missing_driver="error")
    converted: list[dict[str, Any]] = [model_to_doc(model_to_proto(m)) for m in models.values()]
    for doc in docs:
        if doc["kind"] == "Device":
            proto = device_to_proto(doc, models[doc["spec"]["deviceModelRef"]["name"]])
            converted.append(device_to_doc(proto))
    through = load_objects(converted, drivers=registry, missing_driver="error")
    for a, b in zip(direct.devices, through.devices, strict=True):
        assert a.protocol_config == b.protocol_config
        assert [p.visitor for p in a.properties] == [p.visitor for p in b.properties]
        assert [p.desired for p in a.properties] == [p.desired for p in b.properties]
        assert [p.push_method for p in a.properties] == [p.push_method for p in b.properties]
        assert a.state_report == b.state_report


def test_standalone_devices_load_and_fit_the_crds() -> None:
    (config,) = [
        d
        for d in documents(DEPLOY / "kubernetes/standalone/mapperkit.yaml")
        if d["kind"] == "ConfigMap"
    ]
    text = config["data"]["devices.yaml"]
    inventory = load_text(text, "devices.yaml", Registry(), missing_driver="error")
    assert [d.id for d in inventory.devices] == ["default/thermostat-hall"]
    for doc in yaml.safe_load_all(text):
        validator = VALIDATORS[(doc["apiVersion"], doc["kind"])]
        assert not list(validator.iter_errors(doc))


@pytest.mark.parametrize("protocol", ["modbus", "opcua", "ble"])
def test_kubeedge_deployments_are_wired_to_their_config(
    protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = documents(DEPLOY / f"kubernetes/kubeedge/mapper-{protocol}.yaml")
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    assert container["args"] == [
        "run",
        "--kubeedge",
        "--http-port",
        "$(MAPPERKIT_HTTP_PORT)",
        "--log-level",
        "$(LOG_LEVEL)",
    ]
    assert int(config["data"]["MAPPERKIT_HTTP_PORT"]) > 0
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": "edge-node-1"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in deployment["spec"]["selector"]["matchLabels"].items())

    # The ConfigMap's environment gives these options to `mapperkit run --kubeedge`.
    for key, value in config["data"].items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser()
    add_kubeedge_options(parser)
    options = options_from_args(parser.parse_args(["--kubeedge"]))
    assert options.protocol == protocol
    assert options.health is not None
    host, port = options.health
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert (get["host"], get["port"], get["path"]) == (host, port, path)
    assert pod["hostNetwork"] is True  # so the kubelet's probe of 127.0.0.1 reaches the pod

    # Both sockets are in the hostPath directory shared with edgecore.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    shared = [n for n, v in volumes.items() if v.get("hostPath", {}).get("path") == "/etc/kubeedge"]
    assert len(shared) == 1
    mount = Path(mounts[shared[0]])
    assert options.dmi_socket.parent == mount
    assert options.socket.parent == mount
    limits = container["resources"]["limits"]
    assert limits["memory"] == "256Mi"


def test_mappers_of_one_node_take_distinct_node_ports() -> None:
    # hostNetwork: the health and API ports of all protocols share the node's ports.
    ports: list[int] = []
    for path in sorted((DEPLOY / "kubernetes/kubeedge").glob("mapper-*.yaml")):
        (config,) = [d for d in documents(path) if d["kind"] == "ConfigMap"]
        ports += [int(config["data"][k]) for k in ("MAPPERKIT_HEALTH_PORT", "MAPPERKIT_HTTP_PORT")]
    assert len(ports) == 6
    assert len(set(ports)) == len(ports)


def test_dockerfile_is_multi_stage_slim_and_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(froms) >= 2
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim", text, re.M)
    final = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER 10001:10001$", final, re.M)
    assert 'ENTRYPOINT ["mapperkit"]' in final
    assert "pip install" not in final  # nothing is built in the runtime stage
    assert "COPY --from=build /opt/mapperkit /opt/mapperkit" in final
    assert re.search(r'pip install "\.\[kubeedge,\$\{EXTRAS\}\]"', text)
    assert re.search(r"^ARG EXTRAS=modbus$", text, re.M)
