"""Write the demo district inventory (edge/app/sites/kreuzviertel/inventory.csv)."""

from pathlib import Path

from simulators.district import district_csv

out = Path(__file__).resolve().parent.parent / "edge" / "app" / "sites" / "kreuzviertel" / "inventory.csv"
out.write_text(district_csv(), encoding="utf-8")
print(f"wrote {out}")
