import numpy as np
import pytest

from quicdesign.reference import OFFICIAL_B2_L5_ROWS, THRESHOLD_P_1_512

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
