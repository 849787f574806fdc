"""User-facing errors: the CLI prints one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (missing file, bad argument, too little text, ...).

    Raised anywhere in the library; `causalshift.cli.main` turns it into one line on
    stderr and exit code 2, with no traceback.
    """
