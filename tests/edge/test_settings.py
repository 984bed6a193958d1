"""Settings and inventory: valid files load; every bad input names the key, line and file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devices.inventory import load_inventory
from edge.app.validation import check_file
from edge.errors import ConfigError
from edge.settings import load_settings

SITE = Path(__file__).parents[2] / "edge" / "app" / "sites" / "kreuzviertel" / "site.toml"
HEADER = "id,lat,lon,segment,order,lighting_class,flags,controller,host,port,unit,index,p_max_w\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_demo_site_loads() -> None:
    """The shipped demo site and its 500-lamp inventory validate."""
    s = load_settings(SITE)
    inv = load_inventory(s.inventory_path())
    assert s.site.id == "kreuzviertel"
    assert len(inv.lamps) == 500
    assert len(inv.controllers) == 10
    assert check_file(SITE) == []


def test_unknown_and_invalid_keys_are_named(tmp_path: Path) -> None:
    """A typo and a bad value are both reported, each with its dotted key and the file."""
    p = write(tmp_path, "site.toml", '[site]\nid = "x"\nlatitude = 123\n[mqtt]\nurll = "mqtt://h"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(p)
    text = str(err.value)
    assert "site.latitude" in text
    assert "mqtt.urll: unknown key" in text
    assert str(p) in text


def test_environment_overrides_file_and_is_blamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGE_* variables override the file; a bad one is named as the source of the error."""
    p = write(tmp_path, "site.toml", '[mqtt]\nurl = "mqtt://a:1883"\n')
    monkeypatch.setenv("EDGE_MQTT__URL", "mqtt://b:1884")
    assert load_settings(p).mqtt.url == "mqtt://b:1884"
    monkeypatch.setenv("EDGE_MQTT__URL", "http://nope")
    with pytest.raises(ConfigError, match="environment variable EDGE_MQTT__URL"):
        load_settings(p)


def test_broken_toml_is_reported(tmp_path: Path) -> None:
    p = write(tmp_path, "site.toml", "[site\nid=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(p)


def test_check_config_exits_2_without_traceback(tmp_path: Path) -> None:
    """`edge check-config` on a bad file: exit code 2, the key in the message, no traceback."""
    p = write(tmp_path, "site.toml", '[lighting]\nmax_changes = 0\n[inventory]\npath = "inv.csv"\n')
    write(tmp_path, "inv.csv", HEADER + "L1,51.5,7.4,s,0,P4,,c1,127.0.0.1,1502,1,0,38\n")
    r = subprocess.run(
        [sys.executable, "-m", "edge.app.cli", "check-config", str(p)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    assert "lighting.max_changes" in r.stderr
    assert "Traceback" not in r.stderr


def test_inventory_errors_name_line_and_column(tmp_path: Path) -> None:
    """Every bad row is listed with its line number and the column at fault."""
    rows = [
        "L1,51.5,7.4,s,0,P4,,c1,127.0.0.1,1502,1,0,38",
        "L1,51.5,7.4,s,1,P4,,c1,127.0.0.1,1502,1,1,38",  # duplicate id
        "L3,95,7.4,s,2,P4,,c1,127.0.0.1,1502,1,2,38",  # latitude
        "L4,51.5,7.4,s,3,X9,,c1,127.0.0.1,1502,1,3,38",  # class
        "L5,51.5,7.4,s,4,P4,sparkly,c1,127.0.0.1,1502,1,4,38",  # flag
        "L6,51.5,7.4,s,5,P4,,c1,127.0.0.1,1502,1,0,38",  # index taken
        "L7,51.5,7.4,s,6,P4,,c1,127.0.0.1,9999,1,6,38",  # controller endpoint differs
    ]
    p = write(tmp_path, "inv.csv", HEADER + "\n".join(rows) + "\n")
    with pytest.raises(ConfigError) as err:
        load_inventory(p)
    lines = err.value.lines
    assert any("line 3" in x and "already used" in x for x in lines)
    assert any("line 4" in x and "lat" in x for x in lines)
    assert any("line 5" in x and "lighting_class" in x for x in lines)
    assert any("line 6" in x and "flags" in x for x in lines)
    assert any("line 7" in x and "index" in x for x in lines)
    assert any("line 8" in x and "two different endpoints" in x for x in lines)


def test_geojson_inventory(tmp_path: Path) -> None:
    """GeoJSON points carry [longitude, latitude]; properties as in the CSV."""
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": f"G{i}",
                "geometry": {"type": "Point", "coordinates": [7.45 + i * 1e-4, 51.51]},
                "properties": {
                    "segment": "weg",
                    "order": i,
                    "lighting_class": "P5",
                    "flags": ["bike_path"],
                    "controller": "c",
                    "port": 1502,
                    "index": i,
                },
            }
            for i in range(3)
        ],
    }
    p = write(tmp_path, "inv.geojson", json.dumps(doc))
    inv = load_inventory(p)
    assert inv.lamps["G2"].lon == pytest.approx(7.4502)
    assert inv.lamps["G0"].lat == 51.51
    assert inv.segments["weg"] == ("G0", "G1", "G2")
    assert "bike_path" in inv.lamps["G1"].flags


def test_a_section_variable_that_is_not_json_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EDGE_MQTT='{...' (a whole section as one variable, broken JSON) is a ConfigError naming
    the variable, not pydantic-settings' traceback, and does not echo a password in it."""
    p = write(tmp_path, "site.toml", '[site]\nid = "x"\n')
    monkeypatch.setenv("EDGE_MQTT", '{"url": "mqtt://u:Json-secret-77@h", ')
    with pytest.raises(ConfigError) as err:
        load_settings(p)
    assert err.value.lines == [err.value.lines[0]]
    assert err.value.lines[0].startswith("environment variable EDGE_MQTT: mqtt: not valid JSON")
    assert "Json-secret-77" not in str(err.value)
    r = subprocess.run(
        [sys.executable, "-m", "edge.app.cli", "check-config", str(p)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "EDGE_MQTT" in r.stderr


def test_a_validation_error_names_file_and_key_once(tmp_path: Path) -> None:
    """The message of a pydantic-made ConfigError is its lines: file and key appear once each."""
    from pydantic import BaseModel, ConfigDict

    from edge.tomlfile import load_model

    class Small(BaseModel):
        model_config = ConfigDict(extra="forbid")
        limit_a: float

    path = tmp_path / "small.toml"
    path.write_text('limit_a = "lots"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_model(Small, path)
    text = str(info.value)
    assert text.count(str(path)) == 1
    assert text.count("limit_a") == 1
    assert info.value.key == "limit_a"
