"""Bin inventory and [waste] settings: valid files load; every bad row or key is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.inventory import load_bins, parse_bins, write_bins
from edge.app.validation import check_file
from edge.errors import ConfigError
from edge.settings import load_settings, window_s

HEADER = "id,dev_eui,lat,lon,kind,volume_l,height_mm,blind_zone_mm,density_kg_l,road_class,zone\n"
GOOD = "B1,70B3D57ED0020001,51.51,7.45,shopping,1100,1300,250,0.1,pedestrian,fuzo\n"
WASTE = """
[waste]
bins = "bins.csv"
depot = { lat = 51.50, lon = 7.44 }
disposal = { lat = 51.52, lon = 7.47, service_s = 900 }
trucks = [{ id = "truck-1", volume_l = 16000, weight_kg = 9000, shift = "06:00-14:00" }]
zones = [{ id = "fuzo", window = "06:00-10:00" }]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_fill_from_distance_uses_height_and_blind_zone(tmp_path: Path) -> None:
    """A reading at the floor is empty, at the blind zone full; in between linear, clamped outside."""
    (b,) = load_bins(write(tmp_path, "bins.csv", HEADER + GOOD), ["fuzo"])
    assert b.dev_eui == "70b3d57ed0020001"
    assert b.fill_of(1300) == 0.0
    assert b.fill_of(250) == 1.0
    assert b.fill_of(100) == 1.0  # inside the blind zone: overflowing, still 100 %
    assert b.fill_of(775) == pytest.approx(0.5)
    assert b.fill_of(b.distance_of(0.37)) == pytest.approx(0.37)


def test_bad_rows_are_all_listed_with_line_and_column(tmp_path: Path) -> None:
    rows = (
        HEADER
        + GOOD
        + "B2,zz,51.51,7.45,residential,240,1000,200,0.1,residential,\n"
        + "B3,70b3d57ed0020003,51.51,7.45,forest,240,1000,200,0.1,residential,\n"
        + "B1,70b3d57ed0020004,51.51,7.45,park,240,1000,200,0.1,residential,\n"
        + "B5,70b3d57ed0020005,51.51,7.45,park,240,1000,950,0.1,residential,\n"
        + "B6,70b3d57ed0020006,51.51,7.45,park,240,1000,200,0.1,residential,ring\n"
        + "B7,70b3d57ed0020001,51.51,7.45,park,240,1000,200,0.1,motorway,\n"
    )
    with pytest.raises(ConfigError) as info:
        load_bins(write(tmp_path, "bins.csv", rows), ["fuzo"])
    text = "\n".join(info.value.lines)
    assert "line 3: dev_eui: 'zz' is not 16 hex digits" in text
    assert "line 4: kind: 'forest'" in text
    assert "line 5: id: 'B1' already on line 2" in text
    assert "line 6: blind_zone_mm" in text
    assert "line 7: zone: 'ring' is not a configured waste zone" in text
    assert "line 8: road_class: 'motorway'" in text
    assert len(info.value.lines) == 6


def test_round_trip_through_write_bins(tmp_path: Path) -> None:
    bins = parse_bins(
        [dict(zip(HEADER.strip().split(","), GOOD.strip().split(","), strict=True))], "x", ["fuzo"]
    )
    write_bins(tmp_path / "out.csv", bins)
    assert load_bins(tmp_path / "out.csv", ["fuzo"]) == bins


def test_waste_settings_load_and_check(tmp_path: Path) -> None:
    write(
        tmp_path,
        "inventory.csv",
        "id,lat,lon,segment,lighting_class,controller,port,index\nL1,51.5,7.4,s,M3,c1,15020,0\n",
    )
    write(tmp_path, "bins.csv", HEADER + GOOD)
    cfg = write(tmp_path, "site.toml", WASTE)
    s = load_settings(cfg)
    assert s.bins_path() == tmp_path / "bins.csv"
    assert s.waste.trucks[0].volume_l == 16000
    assert window_s(s.waste.zones[0].window) == (6 * 3600, 10 * 3600)
    assert check_file(cfg) == []
    write(tmp_path, "bins.csv", HEADER + GOOD.replace("fuzo", "mall"))
    assert any("zone: 'mall'" in line for line in check_file(cfg))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (WASTE.replace('shift = "06:00-14:00"', 'shift = "14:00-06:00"'), "ends before it starts"),
        (WASTE.replace('window = "06:00-10:00"', 'window = "6-10"'), "'6' is not HH:MM"),
        (WASTE.replace("depot = { lat = 51.50, lon = 7.44 }\n", ""), "depot is missing"),
        (
            WASTE.replace(
                'trucks = [{ id = "truck-1", volume_l = 16000, weight_kg = 9000, shift = "06:00-14:00" }]',
                "trucks = []",
            ),
            "no trucks",
        ),
        (WASTE + 'plan_at = "25:00"\n', "plan_at"),
        (WASTE + "threshold = 1.5\n", "waste.threshold"),
    ],
)
def test_bad_waste_settings_are_named(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "site.toml", text))
    assert needle in str(info.value)
