"""Settings: every setting a user can give charlm, declared once, as a row (`rows.Setting`): its
name (the Python keyword and the JSON field), type, default, bounds in words, help, and the commands
that take it. From the rows come the click options (`charlm.cli.options`), the Python API's
signatures and `help()`, the HTTP request fields, and the checks: `Setting.check(value, said)`
refuses a value out of bounds with one line that names it as the caller named it (a flag, a
keyword, a JSON field). Click's range types are made from the same bounds, so `--help` and the
check never disagree.

The tables, a row a setting: `TRAIN` and `STATS` (`training`), `GENERATE`, `TRANSLATE` and `SERVE`
(`generation`), `EXPORT` (`export`). Adding a setting is adding a row and the code that uses it. Standard library only.
"""

from charlm.settings.export import EXPORT
from charlm.settings.generation import GENERATE, SERVE, TRANSLATE, UNKNOWN
from charlm.settings.rows import Setting, SettingError, annotation, for_command, parameters, said_by, table
from charlm.settings.training import MAX_THREADS, STATS, TRAIN

__all__ = ["EXPORT", "GENERATE", "MAX_THREADS", "SERVE", "STATS", "TRAIN", "TRANSLATE", "UNKNOWN", "Setting", "SettingError",
           "annotation", "for_command", "parameters", "said_by", "table"]
