"""CI: the installed wheel, as a user meets it (run from outside the checkout, the wheel's directory
first on PYTHONPATH). Fails if spectral is not the wheel's copy, or if a configuration the code reads
is missing from the package."""

import os
import subprocess
import sys
from pathlib import Path

site = Path(os.environ["SPECTRAL_WHEEL_SITE"]).resolve()
repo = Path(os.environ["SPECTRAL_REPO"]).resolve()

import spectral  # noqa: E402
from spectral import configs, repro  # noqa: E402

assert Path(spectral.__file__).resolve().is_relative_to(site), (
    f"spectral imported from {spectral.__file__}, not the wheel"
)
used = sorted({plan["collect"] for plan in repro.SCALES.values() if isinstance(plan["collect"], str)})
for name in used:
    settings = configs.load(name)  # one clear error if the package lacks it
    assert settings, name
print(f"packaged configs load: {', '.join(used)} (shipped: {', '.join(configs.names())})")


def run(*args):
    print("$ python", *args, flush=True)
    subprocess.run([sys.executable, *args], check=True, cwd=site)


run("-m", "spectral.collect", "--help")
sys.path.insert(0, str(repo / "tests"))
from conftest import make_tiny_model  # noqa: E402

model = make_tiny_model(site / "tiny-bert")
run("-m", "spectral.repro", "--scale", "tiny", str(site / "run"), "--model", str(model), "--no-progress")
print("wheel check: ok")
