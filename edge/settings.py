"""Site settings: one TOML file plus `EDGE_*` environment variables, validated once.

Environment variables override the file, nested keys joined by `__`
(`EDGE_MQTT__URL=mqtt://...`). Every error names the key and where it came from,
so `edge check-config` can explain a bad file without a traceback.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from edge import redact
from edge.errors import ConfigError
from edge.mqtt import BrokerAddress, TlsFiles
from edge.settings_environment import EnvironmentSettings
from edge.settings_ngsi import NgsiSettings
from edge.settings_sections import (
    ApproachSettings,
    CabinetSettings,
    CarParkSettings,
    ChargingSettings,
    ClockSettings,
    DispatcherSettings,
    DisplaySettings,
    DisplaysSettings,
    FeederSettings,
    HelpPointSettings,
    HelpPointsSettings,
    InventorySettings,
    LightingSettings,
    LoggingSettings,
    MetricsSettings,
    MqttSettings,
    OcppSettings,
    PlaceSettings,
    Section,
    SiteSettings,
    StorageSettings,
    TlsSettings,
    TrafficStep,
    TruckSettings,
    WasteSettings,
    ZoneSettings,
    window_s,
)
from edge.tomlfile import config_error, read_toml

ENV_PREFIX = "EDGE_"

__all__ = [
    "ENV_PREFIX",
    "ApproachSettings",
    "BrokerLink",
    "CabinetSettings",
    "CarParkSettings",
    "ChargingSettings",
    "ClockSettings",
    "DispatcherSettings",
    "DisplaySettings",
    "DisplaysSettings",
    "FeederSettings",
    "HelpPointSettings",
    "HelpPointsSettings",
    "InventorySettings",
    "LightingSettings",
    "LoggingSettings",
    "MetricsSettings",
    "MqttSettings",
    "NgsiSettings",
    "OcppSettings",
    "PlaceSettings",
    "Section",
    "Settings",
    "SiteSettings",
    "StorageSettings",
    "TlsSettings",
    "TrafficStep",
    "TruckSettings",
    "WasteSettings",
    "ZoneSettings",
    "load_settings",
    "settings_error",
    "window_s",
]


@dataclass(frozen=True, slots=True)
class BrokerLink:
    """One broker link of the site: its URL, TLS settings and the keys that set them."""

    url_key: str
    url: str = field(repr=False)
    tls_key: str
    tls: TlsSettings
    base: Path

    def files(self) -> TlsFiles | None:
        """The TLS files for `edge.mqtt` (paths resolved against the config folder), if any."""
        t = self.tls
        if not t.configured and t.key_password is None:
            return None

        def path(v: str) -> Path | None:
            if not v:
                return None
            p = Path(v)
            return p if p.is_absolute() else self.base / p

        return TlsFiles(
            ca_file=path(t.ca_file),
            cert_file=path(t.cert_file),
            key_file=path(t.key_file),
            key_password=t.key_password.get_secret_value() if t.key_password else None,
            key=self.tls_key,
        )

    def address(self) -> BrokerAddress:
        """The parsed address with TLS; ConfigError (naming the key) if the URL or a file is bad."""
        address = BrokerAddress.parse(self.url, tls=self.files(), key=self.url_key)
        address.ssl_context()  # loads the CA, certificate and key now, so a bad one is named
        return address


class Settings(BaseSettings):
    """All settings of one edge site."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    site: SiteSettings = SiteSettings()
    inventory: InventorySettings = InventorySettings()
    storage: StorageSettings = StorageSettings()
    mqtt: MqttSettings = MqttSettings()
    lighting: LightingSettings = LightingSettings()
    dispatcher: DispatcherSettings = DispatcherSettings()
    charging: ChargingSettings = ChargingSettings()
    displays: DisplaysSettings = DisplaysSettings()
    waste: WasteSettings = WasteSettings()
    helppoints: HelpPointsSettings = HelpPointsSettings()
    environment: EnvironmentSettings = EnvironmentSettings()
    metrics: MetricsSettings = MetricsSettings()
    ngsi: NgsiSettings = NgsiSettings()
    logging: LoggingSettings = LoggingSettings()
    clock: ClockSettings = ClockSettings()
    config_dir: Path = Path()

    @model_validator(mode="after")
    def _steps_sorted(self) -> Settings:
        starts = [s.start for s in self.lighting.traffic_profile]
        if len(set(starts)) != len(starts):
            raise ValueError("lighting.traffic_profile has two steps with the same start")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file; no dotenv or secrets directories.
        return (env_settings, init_settings)

    def inventory_path(self) -> Path:
        """The inventory path resolved against the config file's folder."""
        p = self.inventory.path
        return p if p.is_absolute() else self.config_dir / p

    def resolve(self, path: str | Path) -> Path:
        """A path from the settings, relative to the config file's folder."""
        p = Path(path)
        return p if p.is_absolute() else self.config_dir / p

    def mqtt_link(self) -> BrokerLink:
        """The northbound broker (API, LoRaWAN uplinks)."""
        return BrokerLink("mqtt.url", self.mqtt.url, "mqtt.tls", self.mqtt.tls, self.config_dir)

    def board_link(self) -> BrokerLink:
        """Where the LED boards are: `displays.board_mqtt_url`, else the northbound broker."""
        d = self.displays
        if not d.board_mqtt_url:
            return self.mqtt_link()
        tls, key = (d.board_tls, "displays.board_tls") if d.board_tls else (self.mqtt.tls, "mqtt.tls")
        return BrokerLink("displays.board_mqtt_url", d.board_mqtt_url, key, tls, self.config_dir)

    def fleet_link(self) -> BrokerLink:
        """Where the trucks talk: `waste.fleet_mqtt_url`, else the northbound broker."""
        w = self.waste
        if not w.fleet_mqtt_url:
            return self.mqtt_link()
        tls, key = (w.fleet_tls, "waste.fleet_tls") if w.fleet_tls else (self.mqtt.tls, "mqtt.tls")
        return BrokerLink("waste.fleet_mqtt_url", w.fleet_mqtt_url, key, tls, self.config_dir)

    def broker_links(self) -> dict[str, BrokerLink]:
        """Every distinct broker link this site opens, by the key that sets its URL."""
        links = [self.mqtt_link()] if self.mqtt.url else []
        if any(x.kind == "board" for x in self.displays.displays):
            links.append(self.board_link())
        if self.waste.bins is not None:
            links.append(self.fleet_link())
        return {link.url_key: link for link in links if link.url}

    def bins_path(self) -> Path | None:
        """The bin inventory path resolved against the config file's folder, if any."""
        p = self.waste.bins
        if p is None:
            return None
        return p if p.is_absolute() else self.config_dir / p


def _env_keys() -> set[str]:
    return {k for k in os.environ if k.startswith(ENV_PREFIX)}


def _where(loc: tuple[int | str, ...], file: str) -> str:
    env_name = ENV_PREFIX + "__".join(str(p).upper() for p in loc if isinstance(p, str))
    for k in _env_keys():
        if env_name.startswith(k) or k.startswith(env_name):
            return f"environment variable {k}"
    return file


def load_settings(path: Path | str | None, **overrides: Any) -> Settings:
    """Read, merge and validate settings once; raise ConfigError naming key and file."""
    file = str(path) if path else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        data = read_toml(p)
        data["config_dir"] = p.resolve().parent
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[key] = value
    # Secrets are known before validation, so even an error about them cannot echo them.
    _remember_secrets(data)
    _remember_secrets({k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)})
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise settings_error(exc, file) from None
    except SettingsError as exc:
        # A section given as one variable (EDGE_MQTT='{...}') that is not JSON.
        m = re.search(r'field "(\w+)"', str(exc))
        section = m.group(1) if m else "?"
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        msg = redact.redact_text(
            f"environment variable {ENV_PREFIX}{section.upper()}: {section}: not valid JSON{cause}"
        )
        error = ConfigError(msg)
        error.key, error.file, error.lines = section, file, [msg]
        raise error from None


def _remember_secrets(value: Any, key: str = "") -> None:
    """Register every URL password and secret-named value in raw settings with `edge.redact`."""
    if isinstance(value, dict):
        for k, v in value.items():
            _remember_secrets(v, str(k))
    elif isinstance(value, list | tuple):
        for v in value:
            _remember_secrets(v, key)
    elif isinstance(value, str):
        if redact.is_secret_key(key.rsplit("__", 1)[-1]):
            redact.remember(value)
        elif "://" in value:
            redact.remember_url(value)


def settings_error(exc: ValidationError, file: str) -> ConfigError:
    """Turn pydantic's errors into one ConfigError listing every key, its source and the reason."""
    return config_error(exc, file, _where)
