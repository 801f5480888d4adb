import os

import numpy as np
import pytest
from hypothesis import settings

from quicdesign.reference import OFFICIAL_B2_L5_ROWS, THRESHOLD_P_1_512

# Deterministic property tests: the same examples on every run and machine, no example
# database (a failure found once must not silently replay forever or differ between CI and
# a laptop), no wall-clock deadline (2 shared cores make timings noise). Set
# QUICDESIGN_HYPOTHESIS=explore to search with fresh random examples locally.
settings.register_profile("deterministic", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", derandomize=False, database=None, deadline=None)
settings.load_profile(os.environ.get("QUICDESIGN_HYPOTHESIS", "deterministic"))

OFFICIAL_B2_L5_X2 = np.array(OFFICIAL_B2_L5_ROWS[2].value)
OFFICIAL_B2_L5_X3 = np.array(OFFICIAL_B2_L5_ROWS[3].value)
T_1_512 = THRESHOLD_P_1_512.value


@pytest.fixture
def official_b2_l5():
    """The official b=2, l=5 receiver, end rows re-centred to means of -T and +T."""
    x2 = OFFICIAL_B2_L5_X2
    x3 = OFFICIAL_B2_L5_X3
    receiver = np.column_stack([-x3[::-1], -x2[::-1], x2, x3])
    receiver[:, 0] += -T_1_512 - receiver[:, 0].mean()
    receiver[:, 3] += T_1_512 - receiver[:, 3].mean()
    return receiver
