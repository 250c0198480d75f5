"""What a plugin claims (its app's sage.yaml ``resources``, its job's ``device.<name>`` keys) and
which of a node's devices serve the claims: pure functions, and the real Sage app files that
list ``resources``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hivebus.formats import load_app
from hivebus.handlers.devices import (
    Claim,
    Holder,
    app_claims,
    assign,
    at_least,
    held_devices,
    job_claims,
    mismatch,
)
from hivebus.handlers.fit import parse_request
from hivebus.schemas.node import DeviceSpec

REALWORLD = Path(__file__).resolve().parents[2].parent / "shared" / "realworld" / "sageyaml"
ABSENT = f"{REALWORLD} is absent: the real Sage app files live beside the repository, not in it"
BUILD_ON_SUCCESS = REALWORLD / "sage-ecr__test_ecr_api" / "test_app_build_on_success.yaml"


def device(name: str, type_: str = "RGB_image_producer", **attributes: Any) -> DeviceSpec:
    return DeviceSpec.model_validate({"name": name, "type": type_, **attributes})


TOP = device("top_camera", view="top", resolution="1920x1080", path="/dev/video0")
BOTTOM = device("bottom_camera", view="bottom", resolution="640x480")
MIC = device("mic", "microphone", exclusive=False)


def one(item: dict[str, Any]) -> Claim:
    claims, problems = app_claims([item])
    assert problems == []
    (claim,) = claims
    return claim


# --- claims from an app's resources -------------------------------------------------------------


def test_sages_resources_item_is_a_claim_of_type_equal_and_minimum_attributes() -> None:
    claim = one({"type": "RGB_image_producer", "view": "top", "min_resolution": "600x800"})
    assert (claim.type, claim.equal, claim.minimum) == (
        "RGB_image_producer",
        (("view", "top"),),
        (("resolution", "600x800"),),
    )
    assert mismatch(claim, TOP) is None
    assert mismatch(claim, BOTTOM) == "view is bottom"
    assert mismatch(claim, MIC) == "type is microphone"
    assert mismatch(claim, device("cam", view="top", resolution="640x480")) == (
        "resolution 640x480 is below 600x800"
    )
    assert mismatch(claim, device("cam", view="top")) == "has no resolution"


def test_yaml_numbers_and_booleans_compare_as_the_text_a_device_holds() -> None:
    claim = one({"type": "microphone", "channels": 2, "min_rate": 44100, "stereo": True})
    good = device("m", "microphone", channels=2, rate=48000, stereo=True)
    assert mismatch(claim, good) is None
    assert mismatch(claim, device("m", "microphone", channels=2, rate=22050, stereo=True)) == (
        "rate 22050 is below 44100"
    )


def test_at_least_compares_each_part_in_order() -> None:
    assert at_least("1920x1080", "600x800")
    assert not at_least("800x600", "600x800")
    assert at_least("30", "15") and at_least("29.97", "24") and not at_least("10", "15")
    assert not at_least("1920x1080", "30")  # parts do not line up


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ({"view": "top"}, "resources[0]: needs a type"),
        ({"type": ""}, "resources[0]: needs a type"),
        (
            {"type": "camera", "min_resolution": "hd"},
            "resources[0].min_resolution: 'hd' is not a number",
        ),
        ({"type": "camera", "modes": ["a"]}, "resources[0].modes: must be a string or a number"),
        ("camera", "resources[0]: is not a map"),
    ],
)
def test_an_item_that_is_no_claim_says_why(item: Any, problem: str) -> None:
    claims, problems = app_claims([item])
    assert claims == [] and len(problems) == 1 and problems[0].startswith(problem), problems


# --- claims from a job's pluginSpec.resource -----------------------------------------------------


def test_device_keys_of_plugin_spec_resource_are_claims_not_unknown_requests() -> None:
    resource = {"request.cpu": "250m", "device.top_camera": "1", "device.microphone": "2"}
    claims, problems = job_claims(resource)
    assert problems == []
    assert sorted(c.name or "" for c in claims) == ["microphone", "microphone", "top_camera"]
    request, request_problems = parse_request(resource)
    assert request_problems == [] and request.cpu == 0.25
    assert parse_request({"devise.top_camera": "1"})[1] == [
        "unknown resource key 'devise.top_camera'"
    ]


def test_a_device_count_that_is_no_count_is_a_problem() -> None:
    assert job_claims({"device.top_camera": "lots"})[1] == [
        "resource device.top_camera: 'lots' is not a count of devices (\"1\")"
    ]
    assert job_claims({"device.top_camera": "false"}) == ([], [])


# --- serving the claims with a node's devices ---------------------------------------------------


def test_each_claim_gets_its_own_device_even_when_greedy_order_would_fail() -> None:
    any_camera = one({"type": "RGB_image_producer"})
    top = one({"type": "RGB_image_producer", "view": "top"})
    got = assign("W012", [any_camera, top], [TOP, BOTTOM], {})
    assert got.ok and [d.name for d in got.devices] == ["bottom_camera", "top_camera"]
    short = assign("W012", [any_camera, any_camera, any_camera], [TOP, BOTTOM], {})
    assert not short.ok
    assert "each claim needs its own device" in short.problems[0]


def test_a_name_claim_names_a_device_else_reads_as_a_type() -> None:
    (by_name,) = job_claims({"device.bottom_camera": "1"})[0]
    assert [d.name for d in assign("W012", [by_name], [TOP, BOTTOM], {}).devices] == [
        "bottom_camera"
    ]
    (by_type,) = job_claims({"device.microphone": "1"})[0]
    assert [d.name for d in assign("W012", [by_type], [TOP, MIC], {}).devices] == ["mic"]
    (missing,) = job_claims({"device.left_camera": "1"})[0]
    refused = assign("W012", [missing], [TOP], {})
    assert refused.problems == [
        "pluginSpec.resource device.left_camera (type left_camera): no device of W012 serves it "
        "(top_camera (RGB_image_producer): type is RGB_image_producer)"
    ]


def test_an_exclusive_device_held_by_another_goal_is_not_available_a_shared_one_is() -> None:
    top = one({"type": "RGB_image_producer", "view": "top"})
    held = held_devices([("heat-1", [("imagesampler", ["top_camera", "mic"])])], [TOP, BOTTOM, MIC])
    assert held == {"top_camera": Holder("heat-1", "imagesampler")}  # the mic is shared
    refused = assign("W012", [top], [TOP, BOTTOM, MIC], held)
    assert refused.problems == [
        "sage.yaml resources[0] (type RGB_image_producer, view top): W012's top_camera "
        "(RGB_image_producer) is claimed by job heat-1's plugin imagesampler"
    ]
    # Without a held candidate, the devices of the claimed type say why (the mic is no camera).
    assert assign("W012", [top], [BOTTOM, MIC], held).problems == [
        "sage.yaml resources[0] (type RGB_image_producer, view top): no device of W012 serves "
        "it (bottom_camera (RGB_image_producer): view is bottom)"
    ]
    mic = one({"type": "microphone"})
    assert [d.name for d in assign("W012", [mic], [TOP, MIC], held).devices] == ["mic"]


def test_a_node_without_devices_says_so() -> None:
    claim = one({"type": "RGB_image_producer"})
    assert assign("W012", [claim], [], {}).problems == [
        "sage.yaml resources[0] (type RGB_image_producer): W012 lists no devices"
    ]
    assert assign("W012", [], [], {}).ok


def test_a_held_name_the_manifest_no_longer_lists_holds_nothing() -> None:
    assert held_devices([("j", [("p", ["gone"])])], [TOP]) == {}


# --- the real Sage app files ----------------------------------------------------------------------


def real_resource_lists() -> list[tuple[str, list[Any]]]:
    found = []
    for path in sorted(REALWORLD.rglob("*")):
        if path.suffix not in (".yaml", ".yml", ".json") or not path.is_file():
            continue
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and isinstance(doc.get("resources"), list):
            found.append((str(path.relative_to(REALWORLD)), doc["resources"]))
    return found


@pytest.mark.skipif(not REALWORLD.is_dir(), reason=ABSENT)
def test_every_real_sage_yaml_with_resources_parses_into_claims() -> None:
    lists = real_resource_lists()
    assert lists, "the realworld files hold at least one resources list"
    for name, items in lists:
        claims, problems = app_claims(items)
        assert problems == [] and len(claims) == len(items), (name, problems)


@pytest.mark.skipif(not BUILD_ON_SUCCESS.is_file(), reason=ABSENT)
def test_the_ecr_test_apps_top_camera_claim_through_load_app() -> None:
    app = load_app(BUILD_ON_SUCCESS)
    claims, problems = app_claims(app.resource_list)
    assert problems == []
    got = assign("W012", claims, [BOTTOM, TOP], {})
    assert [d.name for d in got.devices] == ["top_camera"]
    low = device("top_camera", view="top", resolution="640x480")
    assert assign("W012", claims, [low], {}).problems == [
        "sage.yaml resources[0] (type RGB_image_producer, view top, min_resolution 600x800): "
        "no device of W012 serves it (top_camera (RGB_image_producer): resolution 640x480 is "
        "below 600x800)"
    ]


def test_a_job_claim_pins_the_apps_claim_instead_of_adding_a_device() -> None:
    top = one({"type": "RGB_image_producer", "view": "top"})
    any_camera = one({"type": "RGB_image_producer"})
    mic = one({"type": "microphone"})
    (top_by_name,) = job_claims({"device.top_camera": "1"})[0]
    (bottom_by_name,) = job_claims({"device.bottom_camera": "1"})[0]
    (mic_by_type,) = job_claims({"device.microphone": "1"})[0]
    devices = [TOP, BOTTOM, MIC]
    # The app asks for a top camera, the job names it: one device.
    assert [d.name for d in assign("W012", [top, top_by_name], devices, {}).devices] == [
        "top_camera"
    ]
    # The app asks for any camera, the job says which: that one.
    assert [d.name for d in assign("W012", [any_camera, bottom_by_name], devices, {}).devices] == [
        "bottom_camera"
    ]
    # The app asks for a microphone, the job asks for one by type: the same microphone.
    assert [d.name for d in assign("W012", [mic, mic_by_type], devices, {}).devices] == ["mic"]
    # The named device cannot serve the app's claim: both are needed.
    got = assign("W012", [top, bottom_by_name], devices, {})
    assert sorted(d.name for d in got.devices) == ["bottom_camera", "top_camera"]
    # A pinned claim refused says both where it came from and who holds the device.
    held = {"top_camera": Holder("heat-1", "imagesampler")}
    assert assign("W012", [top, top_by_name], devices, held).problems == [
        "pluginSpec.resource device.top_camera for sage.yaml resources[0] (name top_camera, "
        "type RGB_image_producer, view top): W012's top_camera (RGB_image_producer) is claimed "
        "by job heat-1's plugin imagesampler"
    ]
