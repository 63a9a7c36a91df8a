"""The one settings object of a node; the CLI maps every flag onto it."""

from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7312
DEFAULT_DATA_DIR = Path("nixie-data")


@dataclass(frozen=True, slots=True)
class Settings:
    """Describe how one node runs.

    host, port: where the HTTP API listens.
    data_dir: the folder holding the node's SQLite database and replica id;
        two running nodes never share one.
    debug: log at DEBUG level instead of INFO.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    debug: bool = False
