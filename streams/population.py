"""The simulated world: order attribute populations and the contact cause mix.

Real order attributes are skewed: a few carriers and sellers carry most orders. Each attribute
is a fixed list of values with Zipf-like weights (rank r has weight 1 / r**skew), so the biggest
value (e.g. carrier `acme`) is the natural target of an incident. The cause mix gives each
contract cause a base contacts-per-order rate and a median delay from order to contact.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass

# Readable names first; an attribute asked to be larger than its list gets `<attribute>-<n>`.
_NAMES: dict[str, tuple[str, ...]] = {
    "carrier": ("acme", "bluedart", "cargox", "dashpost", "ecoship", "fastlane", "globex",
                "hermesia", "ironway", "jetparcel", "koala", "lynx"),
    "warehouse": tuple(f"wh-{i:02d}" for i in range(1, 100)),
    "seller": tuple(f"seller-{i:04d}" for i in range(1, 10000)),
    "category": ("electronics", "fashion", "home", "beauty", "toys", "sports", "books", "grocery",
                 "garden", "automotive", "health", "pets", "office", "music", "baby"),
    "region": ("eu-west", "eu-central", "us-east", "us-west", "uk", "nordics", "iberia", "apac"),
    "payment_method": ("card", "paypal", "bank_transfer", "invoice", "gift_card", "cash"),
}

DEFAULT_SIZES: dict[str, int] = {
    "carrier": 8, "warehouse": 20, "seller": 500, "category": 15, "region": 6,
    "payment_method": 5,
}
ATTRIBUTES: tuple[str, ...] = tuple(DEFAULT_SIZES)


@dataclass(frozen=True)
class Cause:
    """A contract cause with its share of contacts per order and its typical delay."""

    name: str
    cpo: float  # base contacts per order of this cause, before scaling to the total
    median_delay_hours: float


# Base rates sum to 0.08 contacts per order; the delay medians reflect when customers ask:
# payment and cancellation right away, delivery problems after days, refunds after a week.
CAUSES: tuple[Cause, ...] = (
    Cause("where_is_my_order", 0.020, 48),
    Cause("late_delivery", 0.010, 72),
    Cause("damaged_item", 0.006, 96),
    Cause("wrong_item", 0.004, 96),
    Cause("missing_item", 0.004, 96),
    Cause("return_refund", 0.012, 168),
    Cause("cancel_order", 0.006, 2),
    Cause("payment_issue", 0.004, 1),
    Cause("account_access", 0.003, 6),
    Cause("product_question", 0.007, 4),
    Cause("other", 0.004, 24),
)
CAUSE_NAMES: tuple[str, ...] = tuple(cause.name for cause in CAUSES)
BASE_CPO: float = sum(cause.cpo for cause in CAUSES)

CHANNELS: tuple[tuple[str, float], ...] = (
    ("chat", 0.45), ("email", 0.25), ("phone", 0.25), ("social", 0.05),
)


class Population:
    """The values of one attribute with Zipf-like weights; `sample` costs one random draw."""

    def __init__(self, attribute: str, size: int, skew: float) -> None:
        if size < 1:
            raise ValueError(f"{attribute}={size}: a population needs at least one value")
        names = _NAMES.get(attribute, ())
        self.attribute = attribute
        self.values: tuple[str, ...] = tuple(
            names[i] if i < len(names) else f"{attribute}-{i + 1}" for i in range(size)
        )
        weights = [1.0 / (rank**skew) for rank in range(1, size + 1)]
        total = sum(weights)
        self.shares: dict[str, float] = {v: w / total for v, w in zip(self.values, weights)}
        self._cumulative = list(itertools.accumulate(w / total for w in weights))

    def sample(self, rng: random.Random) -> str:
        index = bisect.bisect_right(self._cumulative, rng.random())
        return self.values[min(index, len(self.values) - 1)]

    def sample_except(self, rng: random.Random, excluded: str) -> str:
        """A value other than `excluded`, in proportion to the others' weights (rejection)."""
        if self.values == (excluded,):
            return excluded
        while True:
            value = self.sample(rng)
            if value != excluded:
                return value


def build_populations(sizes: dict[str, int], skew: float) -> dict[str, Population]:
    """One population per attribute; `sizes` overrides DEFAULT_SIZES and may add attributes."""
    merged = {**DEFAULT_SIZES, **sizes}
    return {name: Population(name, size, skew) for name, size in merged.items()}
