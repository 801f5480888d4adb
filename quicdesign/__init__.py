"""quicdesign: near-optimal unbiased quantizers for federated learning and DME.

The runtime needs numpy only. The design layer lives in the separate package
``solvers`` (``pip install quicdesign[design]``).
"""

from ._version import package_version as _package_version

__version__ = _package_version()

from ._deprecation import renamed_attributes
from .bound import BoundCheck, check_global_bound
from .codec import QuicFLAggregator, QuicFLEncoder
from .convenience import ArrayLayout, compress, decompress
from .direct import DirectAggregator, DirectEncoder
from .errors import (
    InputDTypeError,
    InputVectorError,
    ParameterError,
    PayloadError,
    QuicDesignError,
    TableChecksumError,
    TableError,
    TableNotFoundError,
    TableVersionError,
)
from .lattice import LatticeCodeModel, load_lattice_model
from .sender import SenderRule
from .shard import merge
from .table import Table, list_tables, load_entropy_table, load_table, shipped_tables_dir

__all__ = [
    "QuicFLAggregator",
    "ArrayLayout",
    "DirectAggregator",
    "DirectEncoder",
    "QuicFLEncoder",
    "compress",
    "decompress",
    "InputDTypeError",
    "InputVectorError",
    "ParameterError",
    "PayloadError",
    "QuicDesignError",
    "SenderRule",
    "BoundCheck",
    "check_global_bound",
    "Table",
    "TableChecksumError",
    "TableError",
    "TableNotFoundError",
    "TableVersionError",
    "__version__",
    "list_tables",
    "merge",
    "load_entropy_table",
    "LatticeCodeModel",
    "load_lattice_model",
    "load_table",
    "shipped_tables_dir",
]

# The QUIC-FL classes were called Encoder and Aggregator; "Aggregator" now names only the
# protocol (quicdesign.compressors.Aggregator).
__getattr__ = renamed_attributes(
    __name__, {"Encoder": "QuicFLEncoder", "Aggregator": "QuicFLAggregator"}, globals()
)
