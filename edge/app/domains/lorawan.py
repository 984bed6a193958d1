"""The LoRaWAN domain: one uplink ingest for every sensor (parking bays, bins), no controller."""

from __future__ import annotations

from controllers.displays import bay_id
from controllers.waste import WasteController
from devices.inventory import Bin, Inventory
from devices.profiles.lorawan import default_profiles
from devices.protocols.lorawan import UplinkIngest, UplinkSubscriber
from edge.app.domains.base import Site, controller
from edge.kernel import Domain, Kernel
from edge.settings import Settings


def kinds(settings: Settings, inventory: Inventory, bins: list[Bin]) -> dict[str, str]:
    """None of its own: its sensors belong to the displays and waste domains."""
    return {}


async def build(kernel: Kernel, site: Site) -> Domain | None:
    """The ingest and its subscriber for the bay sensors of a built displays domain and the
    site's bins (late uplinks go to the waste history); None when no sensor is configured."""
    s = kernel.settings
    dcfg, wcfg, mq = s.displays, s.waste, s.mqtt
    sensors: dict[str, tuple[str, str]] = {}
    if "displays" in site.built:
        sensors = {e.lower(): (bay_id(e), "parking_magnetic") for c in dcfg.car_parks for e in c.sensors}
    sensors |= {b.dev_eui: (b.id, "bin_ultrasonic") for b in site.bins}
    hps = [p for p in s.helppoints.points if p.via == "lorawan" and p.dev_eui]
    sensors |= {p.dev_eui.lower(): (p.id, "helppoint_button") for p in hps if p.dev_eui}
    env = s.environment
    sensors |= {x.dev_eui.lower(): (x.id, x.profile) for x in env.sensors}
    if not sensors:
        return None
    waste = controller(site.built, "waste", WasteController)
    ingest = UplinkIngest(
        default_profiles(),
        sensors,
        kernel.bus.publish,
        kernel.clock,
        on_late=waste.on_late if waste is not None else None,
        max_clock_skew_s=mq.max_clock_skew_s,
    )
    topics = list(
        dict.fromkeys(
            [
                *dcfg.lorawan_topics,
                *(wcfg.lorawan_topics if site.bins else []),
                *(s.helppoints.lorawan_topics if hps else []),
                *(env.lorawan_topics if env.sensors else []),
            ]
        )
    )
    # The ingest subscribes its uplink topics itself (C-in), ready before the daemon goes online.
    subscriber = UplinkSubscriber(ingest, mqtt_url=mq.url, topics=topics, tls=s.mqtt_link().files())
    return Domain("lorawan", services=(subscriber,), handles={"ingest": ingest, "uplinks": subscriber})
