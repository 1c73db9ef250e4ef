"""`python -m predictor.fit OUT`: fits the bundled data and writes the model document, the file
pushed as the release's model artifact (`sluice push-model OUT <repository>:<tag>`)."""

import sys
from pathlib import Path

from .model import to_json, train


def main(argv: list) -> int:
    if len(argv) != 2:
        print("usage: python -m predictor.fit OUT", file=sys.stderr)
        return 2
    Path(argv[1]).write_text(to_json(train()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
