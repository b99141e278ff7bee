"""The one exception class for a user's mistake (a bad argument, a missing file, no network).

`erc-verl` (erc_verl/cli.py) prints it as one line, `erc-verl <command>: error: <message>`,
and exits with status 2. The message names the problem and the fix. Anything else that escapes
a command is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An expected, user-fixable error: printed as one line, exit status 2."""
