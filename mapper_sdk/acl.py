"""``mapperkit broker acl``: a Mosquitto ACL that confines every identity to its own topics.

From the same Device files the mapper and the twin load, it writes:

* ``acl``: one ``user`` section per identity. Each **mapper** identity may
  publish reports, get requests and state for its own devices only (and the
  MQTT pushMethod topics of their properties) and read only their deltas and
  get results; the **twin** identity may use the twin topics of every device;
  each **app** identity may read the twin's answers for the devices it is given
  and, when read-write, set desired values for them.
* ``passwd.txt``: a password-file template, ``user:password`` per identity
  (``CHANGE-ME``, or random passwords with ``--generate-passwords``), to hash
  with ``mosquitto_passwd -U passwd.txt``.

Mapper identities are per node by default (``mapper-<nodeName>``), as one mapper
process serves a node; ``--mapper-per device`` or ``protocol`` split further.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import topics
from .errors import ConfigError
from .model import DeviceSpec, load_files

__all__ = ["AppRule", "Identity", "build_acl", "command"]

DEVICE_SUFFIXES_MAPPER_WRITE = (topics.TWIN_UPDATE, topics.TWIN_GET, topics.STATE_UPDATE)
DEVICE_SUFFIXES_MAPPER_READ = (
    topics.TWIN_UPDATE_DELTA,
    topics.TWIN_GET_RESULT,
    topics.TWIN_UPDATE_RESULT,
    topics.STATE_UPDATE_RESULT,
)
DEVICE_SUFFIXES_APP_READ = (
    topics.TWIN_UPDATE_RESULT,
    topics.TWIN_UPDATE_DOCUMENT,
    topics.TWIN_UPDATE_DELTA,
    topics.TWIN_GET_RESULT,
    topics.STATE_UPDATE,
    topics.STATE_UPDATE_RESULT,
)


@dataclass(frozen=True, slots=True)
class AppRule:
    """``NAME[:rw|ro][:GLOB]``: an application identity and the devices it may use."""

    name: str
    writable: bool = True
    devices: str = "*"

    @classmethod
    def parse(cls, text: str) -> AppRule:
        parts = text.split(":")
        if not parts[0] or len(parts) > 3:
            raise ConfigError(f"--app {text!r}: expected NAME[:rw|ro][:DEVICE-GLOB]")
        mode = parts[1] if len(parts) > 1 and parts[1] else "rw"
        if mode not in ("rw", "ro"):
            raise ConfigError(f"--app {text!r}: the mode must be rw or ro, got {mode!r}")
        return cls(parts[0], mode == "rw", parts[2] if len(parts) > 2 and parts[2] else "*")


@dataclass(slots=True)
class Identity:
    """One MQTT identity and the topic rules it gets."""

    user: str
    role: str
    read: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)
    readwrite: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)


def _mapper_key(spec: DeviceSpec[Any, Any], per: str) -> str:
    if per == "device":
        return f"mapper-{spec.namespace}-{spec.name}"
    if per == "protocol":
        return f"mapper-{spec.protocol}"
    return f"mapper-{spec.node_name or 'default'}"


def _push_topics(spec: DeviceSpec[Any, Any]) -> list[str]:
    """MQTT pushMethod topics on the mapper's own broker (those without an address)."""
    out = []
    for prop in spec.properties:
        push = prop.push_method
        if push is None or push.mqtt is None or push.mqtt.get("address"):
            continue
        topic = push.mqtt.get("topic")
        if isinstance(topic, str) and topic:
            out.append(
                topic.replace("{namespace}", spec.namespace)
                .replace("{device}", spec.name)
                .replace("{property}", prop.name)
            )
    return out


def build_acl(
    devices: Sequence[DeviceSpec[Any, Any]],
    *,
    mapper_per: str = "node",
    apps: Sequence[AppRule] = (AppRule("app"),),
    twin_user: str = "twin",
) -> list[Identity]:
    """The identities and their rules, twin first, then mappers, then apps."""
    twin = Identity(twin_user, "twin", readwrite=["$hw/events/#", "mapperkit/v1/#"])
    # The twin answers queries on any reply_to / response topic an app names.
    twin.write.append("#")
    mappers: dict[str, Identity] = {}
    for spec in devices:
        user = _mapper_key(spec, mapper_per)
        ident = mappers.setdefault(user, Identity(user, "mapper"))
        ident.devices.append(spec.id)
        for suffix in DEVICE_SUFFIXES_MAPPER_WRITE:
            ident.write.append(topics.device_topic(spec.namespace, spec.name, suffix))
        for suffix in DEVICE_SUFFIXES_MAPPER_READ:
            ident.read.append(topics.device_topic(spec.namespace, spec.name, suffix))
        ident.write.extend(t for t in _push_topics(spec) if t not in ident.write)
    out = [twin, *mappers.values()]
    for rule in apps:
        ident = Identity(rule.name, "app-rw" if rule.writable else "app-ro")
        chosen = [
            s
            for s in devices
            if fnmatch.fnmatchcase(s.id, rule.devices) or fnmatch.fnmatchcase(s.name, rule.devices)
        ]
        nodes = sorted({s.node_name or "default" for s in chosen})
        for spec in chosen:
            ident.devices.append(spec.id)
            ident.write.append(topics.device_topic(spec.namespace, spec.name, topics.TWIN_GET))
            if rule.writable:
                ident.write.append(
                    topics.device_topic(spec.namespace, spec.name, topics.TWIN_UPDATE)
                )
            for suffix in DEVICE_SUFFIXES_APP_READ:
                ident.read.append(topics.device_topic(spec.namespace, spec.name, suffix))
        for node in nodes:
            ident.write.append(topics.membership_get(node))
            ident.read.append(topics.membership_get_result(node))
            ident.read.append(topics.membership_updated(node))
        ident.write.append(topics.QUERY)
        ident.read.append(topics.QUERY_RESULT)
        ident.read.append(f"{topics.REPLY_PREFIX}{rule.name}/#")
        ident.read.append(f"app/{rule.name}/#")
        out.append(ident)
    return out


def render_acl(identities: Sequence[Identity], sources: Sequence[str]) -> str:
    lines = [
        "# Mosquitto ACL written by `mapperkit broker acl` from:",
        *(f"#   {src}" for src in sources),
        "# Use with `acl_file` and `password_file` in mosquitto.conf, `allow_anonymous false`.",
        "# Clients not listed here get no access at all.",
        "",
    ]
    for ident in identities:
        lines.append(f"# {ident.role}" + (f": {', '.join(ident.devices)}" if ident.devices else ""))
        lines.append(f"user {ident.user}")
        for access, rules in (
            ("readwrite", ident.readwrite),
            ("write", ident.write),
            ("read", ident.read),
        ):
            lines.extend(f"topic {access} {rule}" for rule in rules)
        lines.append("")
    return "\n".join(lines)


def render_passwords(identities: Sequence[Identity], generate: bool) -> str:
    lines = []
    for ident in identities:
        password = secrets.token_urlsafe(18) if generate else "CHANGE-ME"
        lines.append(f"{ident.user}:{password}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI
def command(sub: Any) -> None:
    broker = sub.add_parser("broker", help="broker set-up helpers (ACL and password file)")
    tools = broker.add_subparsers(dest="broker_command", metavar="COMMAND")
    p = tools.add_parser(
        "acl",
        help="write a Mosquitto ACL and password-file template for the devices",
        description=(__doc__ or "").split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--devices",
        nargs="+",
        required=True,
        metavar="FILE",
        help="Device/DeviceModel YAML (the files the mapper and the twin load)",
    )
    p.add_argument("--output-dir", "-o", default=".", help="where to write acl and passwd.txt")
    p.add_argument(
        "--mapper-per",
        choices=["node", "protocol", "device"],
        default="node",
        help="one mapper identity per node (default), protocol or device",
    )
    p.add_argument(
        "--app",
        action="append",
        default=None,
        metavar="NAME[:rw|ro][:GLOB]",
        help="an application identity; rw may set desired values, ro only read "
        "(default: one 'app', rw, all devices); repeatable",
    )
    p.add_argument("--twin-user", default="twin", help="the twin service's identity")
    p.add_argument(
        "--generate-passwords", action="store_true", help="random passwords instead of CHANGE-ME"
    )
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_acl)
    broker.set_defaults(func=lambda args: broker.print_help() or 2)


def _acl(args: argparse.Namespace) -> int:
    inventory = load_files(args.devices)
    if not inventory.devices:
        raise ConfigError("the files define no device")
    apps = [AppRule.parse(a) for a in args.app] if args.app else [AppRule("app")]
    names = [args.twin_user, *(a.name for a in apps)]
    if len(set(names)) != len(names):
        raise ConfigError("identity names must differ (twin user and apps)")
    identities = build_acl(
        inventory.devices, mapper_per=args.mapper_per, apps=apps, twin_user=args.twin_user
    )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    acl_path, pw_path = out / "acl", out / "passwd.txt"
    for path in (acl_path, pw_path):
        if path.exists() and not args.force:
            raise ConfigError(f"{path} exists; pass --force to overwrite it")
    acl_path.write_text(render_acl(identities, [str(p) for p in args.devices]))
    fd = os.open(pw_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(render_passwords(identities, args.generate_passwords))
    for ident in identities:
        scope = f"{len(ident.devices)} device(s)" if ident.devices else "all devices"
        print(f"{ident.user:<24} {ident.role:<7} {scope}")
    print(f"\nwrote {acl_path} and {pw_path}")
    print(f"next: mosquitto_passwd -U {pw_path}   (hashes the passwords in place)")
    print(
        "then in mosquitto.conf: allow_anonymous false, "
        f"password_file {pw_path}, acl_file {acl_path}"
    )
    return 0
