"""DuckDB storage: one database file per ``COMPASS_HOME``, schema by numbered migrations."""

from compass.storage.db import Database

__all__ = ["Database"]
