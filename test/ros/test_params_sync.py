"""Pure-Python parts of the node: parameter table, depth synchronisation, tf math (no graph)."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from ros_helpers import REPO


def _msg(t: float, frame: str = "cam"):
    sec = int(t)
    stamp = SimpleNamespace(sec=sec, nanosec=int(round((t - sec) * 1e9)))
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp, frame_id=frame))


def test_shipped_yaml_matches_the_parameter_table():
    from affordance_ros.params import SPECS, check_value

    values = yaml.safe_load((REPO / "config" / "affordance.yaml").read_text())
    values = values["/**"]["ros__parameters"]
    assert set(values) == {s.name for s in SPECS}
    for spec in SPECS:
        assert values[spec.name] == spec.default and check_value(spec, values[spec.name]) is None


def test_check_value_and_device():
    from affordance_ros.params import SPEC_BY_NAME, check_device, check_value

    assert "write 5.0" in check_value(SPEC_BY_NAME["max_rate"], 5)
    assert "outside" in check_value(SPEC_BY_NAME["mask_threshold"], 1.5)
    assert "use one of" in check_value(SPEC_BY_NAME["transport"], "theora")
    assert check_value(SPEC_BY_NAME["half"], True) is None
    assert "integer" in check_value(SPEC_BY_NAME["half"], 1)
    assert check_device("cpu") is None and check_device("cpu:0") is None
    assert "not a torch device" in check_device("gpu")


def test_depth_sync_picks_nearest_within_slop_and_checks_frames():
    from affordance_ros.depth_sync import DepthSync

    sync = DepthSync()
    img = _msg(100.0).header
    assert "no depth" in sync.match(img, 0.05).reason
    for t in (99.0, 99.97, 100.02, 100.2):
        sync.add_depth(_msg(t))
    assert "no camera_info" in sync.match(img, 0.05).reason
    sync.add_info(_msg(100.019))
    m = sync.match(img, 0.05)
    assert m.ok and abs(m.depth.header.stamp.nanosec / 1e9 - 0.02) < 1e-6
    assert "sync_slop" in sync.match(_msg(101.0).header, 0.05).reason
    assert "differs from the image frame" in sync.match(_msg(100.0, "other").header, 0.05).reason
    sync.add_info(_msg(100.02, "other"))
    assert "camera_info frame 'other'" in sync.match(img, 0.05).reason
    ok = DepthSync()
    ok.add_depth(_msg(100.0))
    ok.add_info(_msg(100.0))
    assert "max_depth_age" in ok.match(img, 0.05, now_ns=int(103e9), max_age=2.0).reason
    assert ok.match(img, 0.05, now_ns=int(101e9), max_age=2.0).ok


def test_depth_sync_waits_for_late_depth():
    import threading

    from affordance_ros.depth_sync import DepthSync

    sync = DepthSync()
    sync.add_depth(_msg(99.9))
    sync.add_info(_msg(99.9))
    timer = threading.Timer(
        0.05, lambda: (sync.add_info(_msg(100.0)), sync.add_depth(_msg(100.0)))
    )
    timer.start()
    t0 = time.monotonic()
    m = sync.match(_msg(100.0).header, 0.01, wait=20.0)
    assert m.ok, m.reason
    assert time.monotonic() - t0 < 20.0
    timer.join()


def test_transform_point_matches_rotation_matrix():
    from affordance_ros.geometry import transform_point

    # 90 degrees about z, then a translation.
    q = (0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4))
    out = transform_point(np.array([1.0, 0.0, 2.0]), (0.5, -1.0, 0.0), q)
    np.testing.assert_allclose(out, [0.5, 0.0, 2.0], atol=1e-12)
    with pytest.raises(ValueError):
        transform_point(np.zeros(3), (0, 0, 0), (0, 0, 0, 0))


def test_shipped_fastdds_profile_keeps_shared_memory_and_big_udp_buffers():
    """Every graph test runs with this profile (conftest), so it is exercised end to end."""
    import xml.etree.ElementTree as ET

    ns = {"f": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    root = ET.parse(REPO / "config" / "fastdds.xml").getroot()
    kinds = {
        d.findtext("f:transport_id", namespaces=ns): d.findtext("f:type", namespaces=ns)
        for d in root.iterfind(".//f:transport_descriptor", ns)
    }
    used = [t.text for t in root.iterfind(".//f:userTransports/f:transport_id", ns)]
    assert sorted(kinds[t] for t in used) == ["SHM", "UDPv4"]
    assert root.findtext(".//f:useBuiltinTransports", namespaces=ns) == "false"
