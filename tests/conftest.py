import os

import numpy as np
import pytest
from hypothesis import settings

# Deterministic property tests: the same examples on every run and machine, no example
# database (a failure found once must not silently replay forever or differ between CI and
# a laptop), no wall-clock deadline (2 shared cores make timings noise). Set
# QUICDESIGN_HYPOTHESIS=explore to search with fresh random examples locally.
settings.register_profile("deterministic", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", derandomize=False, database=None, deadline=None)
settings.load_profile(os.environ.get("QUICDESIGN_HYPOTHESIS", "deterministic"))

# The official b=2, l=5 QUIC-FL rows x=2 and x=3 (paper notes, section 5 fixture).
OFFICIAL_B2_L5_X2 = (
    "0.0208 0.0624 0.1034 0.1437 0.1838 0.2254 0.2630 0.3015 0.3409 0.3801 0.4190 0.4584 "
    "0.4976 0.5369 0.5766 0.6166 0.6566 0.6972 0.7389 0.7804 0.8229 0.8661 0.9105 0.9556 "
    "1.0020 1.0492 1.0995 1.1514 1.2022 1.2619 1.3188 1.3710"
)
OFFICIAL_B2_L5_X3 = (
    "1.4762 1.5192 1.5632 1.6094 1.6562 1.7052 1.7558 1.8082 1.8637 1.9221 1.9833 2.0478 "
    "2.1161 2.1891 2.2668 2.3514 2.4423 2.5412 2.6508 2.7697 2.9024 3.0559 3.2330 3.4322 "
    "3.6735 3.9591 4.3182 4.7805 5.3604 6.3316 7.8632 9.9648"
)
T_1_512 = 3.0972690781987846


@pytest.fixture
def official_b2_l5():
    """The official b=2, l=5 receiver, end rows re-centred to means of -T and +T."""
    x2 = np.array(OFFICIAL_B2_L5_X2.split(), dtype=float)
    x3 = np.array(OFFICIAL_B2_L5_X3.split(), dtype=float)
    receiver = np.column_stack([-x3[::-1], -x2[::-1], x2, x3])
    receiver[:, 0] += -T_1_512 - receiver[:, 0].mean()
    receiver[:, 3] += T_1_512 - receiver[:, 3].mean()
    return receiver
