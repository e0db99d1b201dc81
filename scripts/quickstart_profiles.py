"""The quickstart's profiles, read from trainer/recipes/quickstart/profiles.yaml (what each run builds and trains)."""

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from quickstart_report import BARS


ROOT = Path(__file__).resolve().parents[1]
PROFILES_FILE = ROOT / "trainer" / "recipes" / "quickstart" / "profiles.yaml"
#: The dataset configs a profile can train and evaluate on: the pairs, or every date of a location (built with
#: geollava-build --sequences).
CONFIGS = ("default", "sequences")
#: Profile fields that a profile which `extends` another merges key by key into its parent's.
MERGED_FIELDS = ("synth", "base", "eval_options", "bars")


@dataclass(frozen=True)
class Profile:
    """What one quickstart run builds and trains; every stage's options come from here (see PROFILES_FILE)."""

    out: Path
    synth: dict
    frame_size: int
    base: dict
    recipe: Path
    train_overrides: tuple[str, ...] = ()
    sample_size: int = 1000
    eval_options: dict = field(default_factory=dict)
    bars: dict = field(default_factory=dict)
    config: str = "default"

    def __post_init__(self):
        unknown = sorted(set(self.bars) - set(BARS))
        if unknown:
            raise ValueError(f"bars: unknown {unknown}; known: {sorted(BARS)}")
        if self.config not in CONFIGS:
            raise ValueError(f"config {self.config!r}: choose one of {list(CONFIGS)}")


def load_profiles(path: Path = PROFILES_FILE) -> dict[str, Profile]:
    """The profiles of ``path``, each with its ``extends`` chain resolved and its paths under the repository root.

    Raises:
        ValueError: Naming the file, the profile and what is wrong (unknown parent or field, a missing field).
    """
    raw = yaml.safe_load(path.read_text())
    resolved: dict[str, dict] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> dict:
        if name not in raw:
            raise ValueError(f"{path}: profile {chain[-1]!r} extends {name!r}, which is not defined")
        if name in chain:
            raise ValueError(f"{path}: profiles extend each other in a circle: {' -> '.join((*chain, name))}")
        if name not in resolved:
            entry = dict(raw[name])
            parent = entry.pop("extends", None)
            values = dict(resolve(parent, (*chain, name))) if parent else {}
            for key, value in entry.items():
                values[key] = {**values.get(key, {}), **value} if key in MERGED_FIELDS else value
            resolved[name] = values
        return resolved[name]

    known = {f.name for f in fields(Profile)}
    profiles = {}
    for name in raw:
        values = resolve(name, ())
        if set(values) - known:
            raise ValueError(f"{path}: profile {name!r}: unknown field(s) {sorted(set(values) - known)}")
        try:
            profiles[name] = Profile(
                **{
                    **values,
                    "out": ROOT / values["out"],
                    "recipe": ROOT / values["recipe"],
                    "train_overrides": tuple(values.get("train_overrides", ())),
                }
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: profile {name!r}: {err}") from None
    return profiles
