"""The phase of a GD run, read off what every sweep records (shallow, chain and real nets alike).

    diverged            the run diverged (the one StopRule's outcome)
    edge_of_stability   it ends with eta * sharpness >= 2 (1 - margin): at (or above) GD's stability limit 2/eta
    catapult            otherwise, and its loss rose above the initial loss on the way (a spike, then down to a
                        flatter point: the sharpness ended below 2/eta)
    lazy                otherwise: the loss never exceeded its initial value and it ends below 2/eta

On the wide uv model (Lewkowycz et al. 2020; the shallow net with Phi = 0) these are the windows
eta lambda_0 < 2, 2 < eta lambda_0 < 4 and eta lambda_0 > 4 (tests/test_phase_maps.py); on real nets the same
observables name the same behaviour, without a formula for the boundaries.
"""

from __future__ import annotations

import numpy as np

from shallownet.stop import DIVERGED, OUTCOMES

REGIONS = ("lazy", "catapult", "edge_of_stability", "diverged")  # code = index
LAZY, CATAPULT, EDGE, REGION_DIVERGED = range(len(REGIONS))
DEFAULT_MARGIN = 0.1
RISE = 1e-6  # "the loss rose": above (1 + RISE) times the initial loss, past the rounding of recorded maxima


def classify_regions(outcome: np.ndarray, eta: np.ndarray, final_sharpness: np.ndarray, max_loss_ratio: np.ndarray,
                     margin: float = DEFAULT_MARGIN, constant: float = 2.0) -> np.ndarray:
    """Region codes (int8, REGIONS' order), elementwise; outcome: codes of shallownet.stop.OUTCOMES; constant:
    the process's stability limit is constant / eta (2 for GD; momentum's own, docs/theory.md section 9)."""
    outcome, eta = np.asarray(outcome), np.asarray(eta, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        diverged = outcome == OUTCOMES.index(DIVERGED)
        at_edge = ~diverged & (eta * np.asarray(final_sharpness) >= constant * (1.0 - margin))
        rose = ~diverged & ~at_edge & (np.asarray(max_loss_ratio) > 1.0 + RISE)
    codes = np.select([diverged, at_edge, rose], [REGION_DIVERGED, EDGE, CATAPULT], default=LAZY)
    return codes.astype(np.int8)


def region_counts(region: np.ndarray) -> dict[str, int]:
    return {name: int((region == code).sum()) for code, name in enumerate(REGIONS)}
