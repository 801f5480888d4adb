"""Command line: ``python -m solvers.bound FOLDER`` attaches certified bounds to a collection."""

import argparse

from quicdesign._argtypes import add_int_list_option, bounded_int, real
from quicdesign.errors import QuicDesignError

from . import certify_collection


def main(argv=None):
    """Parse the command line and certify the collection it names."""
    parser = argparse.ArgumentParser(
        prog="python -m solvers.bound", description="attach certified bounds to a collection"
    )
    parser.add_argument("folder", help="table collection (a folder with index.json)")
    parser.add_argument(
        "--seconds",
        type=real("seconds", 0.0, 86_400.0),
        default=60.0,
        help="ascent budget per bit width (default: 60)",
    )
    parser.add_argument(
        "--refine",
        type=bounded_int("refine", 1, 100),
        default=1,
        help="split each piece of a design's sender into this many cells (default: 1)",
    )
    parser.add_argument(
        "--start-shared-bits",
        type=bounded_int("start-shared-bits", 0, 12),
        help="start from a design refined to this l, if larger than the collection's "
        "(default: the largest l in the collection)",
    )
    add_int_list_option(parser, "--bits", "bits", 1, 16, "bit widths to certify", "all")
    options = parser.parse_args(argv)
    try:
        certify_collection(
            options.folder,
            seconds=options.seconds,
            refine=options.refine,
            start_shared_bits=options.start_shared_bits,
            bits=options.bits,
        )
    except QuicDesignError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
