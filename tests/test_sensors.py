"""The sensor table (package data) and its lookup, selection and registration."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from clay_hf import sensors as sensors_module
from clay_hf.errors import BandMismatchError, ClayInputError, UnknownSensorError
from clay_hf.sensors import SENSORS_JSON, Sensor, get_sensor, list_sensors, register_sensor, sensor_from_platform

# The spec's table, copied into the fixtures (a clean checkout has no shared/ beside it); when shared/ is there
# the copy must still equal it.
SPEC_TABLE = Path(__file__).parent / "fixtures" / "sensors-spec.md"
SHARED_SPEC_TABLE = Path(__file__).resolve().parents[2] / "shared" / "spec" / "sensors.md"

ALL_SENSORS = [
    "sentinel-2-l2a",
    "planetscope-sr",
    "landsat-c2l1",
    "landsat-c2l2-sr",
    "naip",
    "linz",
    "sentinel-1-rtc",
    "modis",
    "satellogic-MSI-L1D",
    "sentinel-2-l1c",  # not in Clay v1.5's table: added after it, with the L2A normalisation
]
V15_SENSORS = ALL_SENSORS[:-1]  # the table Clay v1.5 was trained with (the spec's sensors.md)


@pytest.fixture
def clean_registry():
    """Undo any register_sensor() a test does."""
    sensors, lookup = dict(sensors_module._SENSORS), dict(sensors_module._LOOKUP)
    yield
    sensors_module._SENSORS.clear()
    sensors_module._SENSORS.update(sensors)
    sensors_module._LOOKUP.clear()
    sensors_module._LOOKUP.update(lookup)


def _parse_spec_table(text: str) -> dict[str, dict]:
    """sensors.md -> {name: {gsd_m, rgb_indices, bands: [(name, wavelength, mean, std)]}}."""
    table = {}
    for block in text.split("\n## ")[1:]:
        lines = block.strip().splitlines()
        head = re.match(r"gsd ([\d.]+) m; rgb_indices (.*)", lines[1])
        rgb = head.group(2).strip()
        bands = []
        for line in lines[2:]:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 4 and cells[0] not in ("band", "---"):
                bands.append((cells[0], float(cells[1]), float(cells[2]), float(cells[3])))
        table[lines[0].strip()] = {
            "gsd_m": float(head.group(1)),
            "rgb_indices": None if rgb == "None" else tuple(json.loads(rgb)),
            "bands": bands,
        }
    return table


# ------------------------------------------------------------------------------------------- the table


def test_every_platform_of_the_table_is_shipped_in_order():
    assert list_sensors() == ALL_SENSORS
    assert SENSORS_JSON.name == "sensors.json" and SENSORS_JSON.is_file()


def test_real_numbers_of_the_table():
    s2 = get_sensor("sentinel-2-l2a")
    assert s2.band_names == (
        "blue",
        "green",
        "red",
        "rededge1",
        "rededge2",
        "rededge3",
        "nir",
        "nir08",
        "swir16",
        "swir22",
    )
    assert s2.wavelengths_um[0] == 0.493 and s2.mean[0] == 1105.0 and s2.std[0] == 1809.0
    assert s2.wavelengths_um[-1] == 2.19 and s2.mean[-1] == 1835.0 and s2.std[-1] == 1379.0
    assert s2.gsd_m == 10.0 and s2.rgb_indices == (2, 1, 0) and s2.num_bands == 10

    s1 = get_sensor("sentinel-1-rtc")
    assert s1.band_names == ("vv", "vh")
    assert s1.wavelengths_um == (3.5, 4.0)
    assert s1.mean == (-12.113, -18.673) and s1.std == (8.314, 8.017)
    assert s1.rgb_indices is None and s1.is_sar_db is True

    assert get_sensor("planetscope-sr").rgb_indices == (5, 3, 1)
    assert get_sensor("modis").gsd_m == 500.0 and get_sensor("modis").rgb_indices == (0, 3, 2)
    assert get_sensor("linz").gsd_m == 0.5 and get_sensor("naip").std == (47.23, 39.82, 35.43, 49.86)
    assert get_sensor("satellogic-MSI-L1D").std[-1] == 1236.71
    assert get_sensor("landsat-c2l1").mean[0] == 10678.0 and get_sensor("landsat-c2l2-sr").mean[0] == 13705.0


def test_only_sentinel_1_is_sar_and_only_modis_scales_the_loss():
    assert [n for n in list_sensors() if get_sensor(n).is_sar_db] == ["sentinel-1-rtc"]
    scales = {n: get_sensor(n).reconstruction_loss_scale for n in list_sensors()}
    assert scales.pop("modis") == 0.1
    assert set(scales.values()) == {1.0}


def test_package_data_equals_the_spec_table_number_for_number():
    spec = _parse_spec_table(SPEC_TABLE.read_text(encoding="utf-8"))
    if SHARED_SPEC_TABLE.is_file():  # the copy in the fixtures is current
        assert SPEC_TABLE.read_text(encoding="utf-8") == SHARED_SPEC_TABLE.read_text(encoding="utf-8")
    assert list(spec) == [n for n in list_sensors() if get_sensor(n).normalisation_from is None] == V15_SENSORS
    for name, row in spec.items():
        sensor = get_sensor(name)
        assert sensor.gsd_m == row["gsd_m"], name
        assert sensor.rgb_indices == row["rgb_indices"], name
        assert list(zip(sensor.band_names, sensor.wavelengths_um, sensor.mean, sensor.std)) == row["bands"], name


def test_to_dict_and_from_dict_round_trip_the_json():
    table = json.loads(SENSORS_JSON.read_text(encoding="utf-8"))["sensors"]
    for name in list_sensors():
        sensor = get_sensor(name)
        assert sensor.to_dict() == table[name]
        assert Sensor.from_dict(name, sensor.to_dict()) == sensor


def test_sensor_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_sensor("naip").gsd_m = 0.6  # type: ignore[misc]


# ------------------------------------------------------------------------------------------- lookup


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Sentinel-2-L2A", "sentinel-2-l2a"),
        ("sentinel_2_l2a", "sentinel-2-l2a"),
        ("sentinel-2", "sentinel-2-l2a"),
        ("S2", "sentinel-2-l2a"),
        ("sentinel-1", "sentinel-1-rtc"),
        ("s1", "sentinel-1-rtc"),
        ("satellogic-msi-l1d", "satellogic-MSI-L1D"),
        ("satellogic", "satellogic-MSI-L1D"),
        ("planet", "planetscope-sr"),
        ("landsat-sr", "landsat-c2l2-sr"),
        ("landsat-l1", "landsat-c2l1"),
        (" NAIP ", "naip"),
    ],
)
def test_get_sensor_is_case_insensitive_and_knows_aliases(name, expected):
    assert get_sensor(name).name == expected


def test_get_sensor_passes_a_sensor_through():
    s2 = get_sensor("s2")
    assert get_sensor(s2) is s2


def test_unknown_sensor_names_the_closest():
    with pytest.raises(UnknownSensorError, match=r"unknown sensor 'sentinal-2'; did you mean 'sentinel-2-l2a'"):
        get_sensor("sentinal-2")
    with pytest.raises(KeyError, match=r"known sensors: sentinel-2-l2a, planetscope-sr"):
        get_sensor("worldview-3")


def test_unknown_sensor_message_is_not_quoted_like_a_key_error():
    with pytest.raises(UnknownSensorError) as info:
        get_sensor("nope")
    assert str(info.value).startswith("unknown sensor 'nope'")


@pytest.mark.parametrize("name", ["landsat", "Landsat-8", "landsat_9"])
def test_ambiguous_landsat_names_ask_which_table(name):
    with pytest.raises(UnknownSensorError, match=r"ambiguous: use 'landsat-c2l2-sr' or 'landsat-c2l1'"):
        get_sensor(name)


def test_get_sensor_rejects_non_strings():
    with pytest.raises(UnknownSensorError, match=r"must be a string, got int 2"):
        get_sensor(2)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- select


def test_select_keeps_the_requested_order_and_remaps_rgb():
    rgb = get_sensor("sentinel-2-l2a").select(["red", "green", "blue"])
    assert rgb.name == "sentinel-2-l2a"
    assert rgb.band_names == ("red", "green", "blue")
    assert rgb.wavelengths_um == (0.665, 0.56, 0.493)
    assert rgb.mean == (1552.0, 1355.0, 1105.0) and rgb.std == (1888.0, 1757.0, 1809.0)
    assert rgb.rgb_indices == (0, 1, 2)
    assert rgb.gsd_m == 10.0 and rgb.aliases == ()


def test_select_without_all_rgb_bands_has_no_rgb_indices():
    assert get_sensor("sentinel-2-l2a").select(["nir", "RED"]).rgb_indices is None
    vv = get_sensor("sentinel-1-rtc").select("vv")
    assert vv.band_names == ("vv",) and vv.is_sar_db


def test_select_unknown_band_names_the_sensor_and_its_bands():
    with pytest.raises(
        ClayInputError,
        match=r"sensor 'naip' has no band 'nir08' \(did you mean 'nir'\?\); its bands are \['red', 'green', 'blue', 'nir'\]",
    ):
        get_sensor("naip").select(["red", "nir08"])


def test_select_rejects_repeats_and_empty_lists():
    with pytest.raises(ClayInputError, match=r"must not repeat, got \['red', 'red'\]"):
        get_sensor("naip").select(["red", "red"])
    with pytest.raises(ClayInputError, match=r"at least one band name of sensor 'naip'"):
        get_sensor("naip").select([])


# ------------------------------------------------------------------------------------------- validation


def _sensor(**changes) -> Sensor:
    fields = dict(
        name="my-drone",
        band_names=("red", "green", "blue"),
        wavelengths_um=(0.65, 0.56, 0.48),
        mean=(100.0, 100.0, 100.0),
        std=(40.0, 40.0, 40.0),
        gsd_m=0.1,
        rgb_indices=(0, 1, 2),
    )
    fields.update(changes)
    return Sensor(**fields)


def test_sensor_coerces_lists_to_tuples_and_floats():
    sensor = _sensor(band_names=["r", "g", "b"], mean=[1, 2, 3], rgb_indices=[0, 1, 2], gsd_m=1)
    assert sensor.band_names == ("r", "g", "b") and sensor.mean == (1.0, 2.0, 3.0)
    assert sensor.rgb_indices == (0, 1, 2) and isinstance(sensor.gsd_m, float)
    hash(sensor)  # frozen and hashable


def test_sensor_validation_errors():
    with pytest.raises(BandMismatchError, match=r"3 band names but 2 values in wavelengths_um"):
        _sensor(wavelengths_um=(0.65, 0.56))
    with pytest.raises(ClayInputError, match=r"every std must be > 0, got \[\('blue', 0.0\)\]"):
        _sensor(std=(1.0, 1.0, 0.0))
    with pytest.raises(ClayInputError, match=r"duplicate band names \['red'\]"):
        _sensor(band_names=("red", "red", "blue"))
    with pytest.raises(ClayInputError, match=r"rgb_indices must be 3 band indices in \[0, 2\], got \[0, 1, 3\]"):
        _sensor(rgb_indices=(0, 1, 3))
    with pytest.raises(ClayInputError, match=r"gsd_m must be a positive number of metres, got -1.0"):
        _sensor(gsd_m=-1)
    with pytest.raises(ClayInputError, match=r"needs at least one band"):
        _sensor(band_names=(), wavelengths_um=(), mean=(), std=(), rgb_indices=None)
    with pytest.raises(ClayInputError, match=r"needs a non-empty name"):
        _sensor(name=" ")
    with pytest.raises(ClayInputError, match=r"mean must be finite, got non-finite for bands \['green'\]"):
        _sensor(mean=(1.0, float("nan"), 1.0))


# ------------------------------------------------------------------------------------------- registration


def test_register_sensor_makes_it_findable(clean_registry):
    drone = register_sensor(_sensor(aliases=("drone",)))
    assert get_sensor("MY-DRONE") is drone and get_sensor("drone") is drone
    assert list_sensors()[-1] == "my-drone"


def test_register_sensor_refuses_a_taken_name_without_overwrite(clean_registry):
    with pytest.raises(ClayInputError, match=r"sensor 'naip' is already registered; pass overwrite=True"):
        register_sensor(_sensor(name="naip"))


def test_register_sensor_overwrite_replaces_the_old_one_and_its_aliases(clean_registry):
    register_sensor(_sensor(aliases=("drone",)))
    new = register_sensor(_sensor(gsd_m=0.2, aliases=("uav",)), overwrite=True)
    assert get_sensor("my-drone") is new and get_sensor("uav") is new
    with pytest.raises(UnknownSensorError, match="unknown sensor 'drone'"):
        get_sensor("drone")


def test_register_sensor_refuses_an_alias_of_another_sensor(clean_registry):
    with pytest.raises(ClayInputError, match=r"name\(s\) \['s2'\] already belong to \['sentinel-2-l2a'\]"):
        register_sensor(_sensor(aliases=("s2",)))
    assert "my-drone" not in list_sensors()


def test_register_sensor_takes_only_sensors(clean_registry):
    with pytest.raises(ClayInputError, match=r"register_sensor\(\) takes a Sensor, got dict"):
        register_sensor({"name": "x"})  # type: ignore[arg-type]


def test_sensor_from_platform():
    assert sensor_from_platform("sentinel-2b", "sentinel-2-l1c") == "sentinel-2-l1c"  # labelled by what it is
    assert sensor_from_platform("sentinel-2b", "sentinel-2-l2a") == sensor_from_platform("S2B") == "sentinel-2-l2a"
    assert sensor_from_platform("LANDSAT_8", "L1TP") == "landsat-c2l1"
    assert sensor_from_platform("landsat-9", "landsat-c2-l2") == "landsat-c2l2-sr"
    assert sensor_from_platform("landsat-8") is None  # level unknown: the two tables differ
    assert sensor_from_platform("landsat-7", "L1TP") is None  # 8-bit ETM+ numbers: no table entry
    assert sensor_from_platform("Sentinel-1A") == "sentinel-1-rtc"
    assert sensor_from_platform("unheard-of-sat") is None


def test_band_aliases_are_data_of_the_table():
    from clay_hf.sensors import band_aliases, canonical_band, map_band_names

    table = json.loads(SENSORS_JSON.read_text(encoding="utf-8"))
    assert band_aliases("sentinel-2-l2a") == table["band_aliases"]["sentinel-2-l2a"]
    assert band_aliases("sentinel-2-l2a")["b8a"] == "nir08" and band_aliases("not-a-sensor") == {}
    landsat = get_sensor("landsat-c2l2-sr")
    # OLI numbering by default, TM/ETM+ numbering for Landsat 4/5/7
    assert canonical_band(landsat, "LC08_SR_B5") == "nir08" and canonical_band(landsat, "B4", "LANDSAT_7") == "nir08"
    assert canonical_band(landsat, "B1") is None and canonical_band(landsat, "B1", "landsat-5") == "blue"
    assert map_band_names(get_sensor("naip"), ["b4", "B1"], None, "here") == ("nir", "red")
    from clay_hf.errors import UnknownBandError

    with pytest.raises(UnknownBandError, match=r"here: sensor 'naip' has no band 'b9'"):
        map_band_names(get_sensor("naip"), ["b9"], None, "here")
    with pytest.raises(UnknownBandError, match=r"map to repeated sensor bands \['red', 'red'\]"):
        map_band_names(get_sensor("naip"), ["b1", "red"], None, "here")


def test_platform_rules_are_data_of_the_table():
    table = json.loads(SENSORS_JSON.read_text(encoding="utf-8"))
    targets = {r.get("sensor") for r in table["platform_rules"]} | {
        lv["sensor"] for r in table["platform_rules"] for lv in r.get("levels", ())
    }
    assert targets - {None} <= set(list_sensors())
    assert sensor_from_platform("landsat-5", "landsat-c2-l2") == "landsat-c2l2-sr"  # level 2 of collection 2
    assert sensor_from_platform("landsat-5", "L2SP") is None  # level 2 without the collection: no table entry
    assert sensor_from_platform("terra") == "modis" and sensor_from_platform("PlanetScope") == "planetscope-sr"
    assert sensor_from_platform("naip") == "naip" and sensor_from_platform(None) is None


# ------------------------------------------------------------------------------------------- Sentinel-2 L1C, evidence


def test_sentinel_2_l1c_borrows_the_l2a_numbers_and_says_so():
    l1c, l2a = get_sensor("sentinel-2-l1c"), get_sensor("sentinel-2-l2a")
    assert l1c.normalisation_from == "sentinel-2-l2a" and l2a.normalisation_from is None
    assert (l1c.band_names, l1c.wavelengths_um, l1c.mean, l1c.std) == (
        l2a.band_names,
        l2a.wavelengths_um,
        l2a.mean,
        l2a.std,
    )
    assert l1c.gsd_m == 10.0 and l1c.rgb_indices == (2, 1, 0)
    assert get_sensor("S2-L1C") is l1c and get_sensor("sentinel-2") is l2a  # the plain name stays L2A
    assert sensor_from_platform("sentinel-2a", "S2MSI1C") == "sentinel-2-l1c"  # a product type
    assert sensor_from_platform("Sentinel-2A", "Level-1C") == "sentinel-2-l1c"
    assert sensor_from_platform("sentinel-2-l1c") == "sentinel-2-l1c"  # a collection id as the platform
    assert sensor_from_platform("sentinel-2a", "sentinel-2-c1-l2a") == "sentinel-2-l2a"


@pytest.mark.parametrize(
    ("name", "sensor", "platform", "level", "when", "baseline"),
    [
        (
            "S2B_MSIL1C_20230601T103629_N0509_R008_T32TQM_20230601T124002.SAFE",
            "sentinel-2-l1c",
            "sentinel-2b",
            "L1C",
            "2023-06-01T10:36:29",
            "05.09",
        ),
        (
            "S2A_MSIL2A_20170613T101031_87_48_B02.tif",
            "sentinel-2-l2a",
            "sentinel-2a",
            "L2A",
            "2017-06-13T10:10:31",
            None,
        ),  # a BigEarthNet patch
        ("T33UUU_20170216T102101_B02.jp2", "sentinel-2-l1c", "sentinel-2", "L1C", "2017-02-16T10:21:01", None),
        ("T33UUU_20170216T102101_B8A_20m.jp2", "sentinel-2-l2a", "sentinel-2", "L2A", "2017-02-16T10:21:01", None),
        ("S2B_52SFA_20220126_0_L2A", "sentinel-2-l2a", "sentinel-2b", "L2A", "2022-01-26", None),  # Earth Search
        (
            "LC08_L2SP_044034_20210508_20210517_02_T1_SR_B4.TIF",
            "landsat-c2l2-sr",
            "landsat-8",
            "L2SP",
            "2021-05-08",
            None,
        ),
        ("LC09_L1TP_044034_20220508_20220510_02_T1_B4.TIF", "landsat-c2l1", "landsat-9", "L1TP", "2022-05-08", None),
        (
            "LE07_L2SP_016035_20000101_20200918_02_T1_SR_B3.TIF",
            "landsat-c2l2-sr",
            "landsat-7",
            "L2SP",
            "2000-01-01",
            None,
        ),
        ("LT50350322008110PAC01_b3.tif", None, "landsat-5", None, "2008-04-19", None),  # no level: no table
        (
            "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48_VV.tif",
            "sentinel-1-rtc",
            "sentinel-1a",
            "GRDH",
            "2017-06-13T16:50:43",
            None,
        ),
    ],
)
def test_product_ids_in_file_names(name, sensor, platform, level, when, baseline):
    from clay_hf.sensors import parse_product_id

    found = parse_product_id(name)
    assert (found.sensor, found.platform, found.level, found.datetime, found.processing_baseline) == (
        sensor,
        platform,
        level,
        when,
        baseline,
    )
    assert parse_product_id("s2_B02.jp2") is None and parse_product_id("scene.tif") is None


def test_product_ids_in_folder_names_and_urls():
    from clay_hf.sensors import product_id_from_paths

    safe = "/d/S2A_MSIL2A_20230601T103631_N0509_R008_T32TQM_20230601T170015.SAFE/GRANULE/L2A_T32TQM_A041519_20230601T103631/IMG_DATA/R10m/T32TQM_20230601T103631_B02_10m.jp2"  # noqa: E501
    assert product_id_from_paths([safe]).sensor == "sentinel-2-l2a"
    cog = "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/52/S/FA/2022/1/S2B_52SFA_20220126_0_L2A/B04.tif"  # noqa: E501
    found = product_id_from_paths([cog])
    assert (found.sensor, found.datetime) == ("sentinel-2-l2a", "2022-01-26")
    assert found.describe() == "a Sentinel-2B L2A product (S2B_52SFA_20220126_0_L2A)"
    assert product_id_from_paths(["/data/sentinel2/s2_B02.jp2"]) is None


def test_instruments_band_names_and_band_counts_as_evidence():
    from clay_hf.sensors import (
        radiometric_offset_rule,
        sensor_from_instruments,
        sensors_for_band_count,
        sensors_for_band_names,
    )

    assert sensor_from_instruments(["oli", "tirs"], "landsat-c2-l2") == "landsat-c2l2-sr"
    assert sensor_from_instruments(["msi"], "sentinel-2-l1c") == "sentinel-2-l1c"
    assert sensor_from_instruments(["msi"]) == "sentinel-2-l2a" and sensor_from_instruments(["hrg"]) is None
    assert sensors_for_band_names(["B02", "B8A", "B12"]) == ["sentinel-2-l2a", "sentinel-2-l1c"]
    assert sensors_for_band_names(["vv", "vh"]) == ["sentinel-1-rtc"] and sensors_for_band_names(["pan"]) == []
    assert sensors_for_band_count(6, "uint16") == ["landsat-c2l1", "landsat-c2l2-sr"]
    assert sensors_for_band_count(4, "uint8") == ["naip", "satellogic-MSI-L1D"]  # the data type orders them
    assert sensors_for_band_count(4, "uint16") == ["satellogic-MSI-L1D", "naip"] and sensors_for_band_count(5) == []
    rule = radiometric_offset_rule("sentinel-2-l2a")
    assert (rule["offset_dn"], rule["since_baseline"], rule["since_date"]) == (1000.0, "04.00", "2022-01-25")
    assert radiometric_offset_rule(get_sensor("sentinel-2-l1c"))["offset_tags"] == ["RADIO_ADD_OFFSET"]
    assert radiometric_offset_rule("landsat-c2l2-sr") is None and radiometric_offset_rule(None) is None
