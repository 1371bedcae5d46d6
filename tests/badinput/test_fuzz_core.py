"""Bad requests of every class against the twin's rules in this process, many examples.

:class:`~twin.service.TwinCore` is what the service runs for each batch of
messages; driving it directly (a batch per request, committed to a real store
as the service does) runs thousands of examples in seconds. The same requests
go through the broker in ``test_fuzz_twin.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from mapper_sdk.model import load_files
from twin.document import Options, device_row
from twin.service import Incoming, TwinCore
from twin.store import Store

from .conftest import DEVICES
from .payloads import DEVICE, KINDS, MAX_PAYLOAD, Bad, bad_requests

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwinCore]:
    store = Store.open(tmp_path_factory.mktemp("core") / "twin.db")
    core = TwinCore(store, Options(max_payload=MAX_PAYLOAD, rate_limit=0), "edge-0")
    core.load(load_files([DEVICES]).devices)
    yield core
    store.close()


def state_of(core: TwinCore) -> Any:
    """Everything a request could change: every device's stored row, its ``last_seen``
    and state, and the remembered requests."""
    return (
        {i: (device_row(d), dict(d.seen)) for i, d in core.devices.items()},
        len(core.dedup),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_every_bad_request_gets_its_4xx_and_changes_nothing(core: TwinCore, kind: str) -> None:
    before = state_of(core)

    @SETTINGS
    @given(bad=bad_requests(kind))
    def check(bad: Bad) -> None:
        batch = core.prepare([Incoming(bad.topic, bad.payload)])
        assert not batch.writes.devices and not batch.writes.dedup
        assert batch.accepted == 0
        out = core.finish(batch)
        assert len(out) == 1, [o.topic for o in out]
        bad.check(out[0].topic, out[0].payload)

    check()
    assert state_of(core) == before
    assert core.devices[DEVICE].version == 0
