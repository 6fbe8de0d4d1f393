"""The one exception type that reaches users as a single line and exit code 2."""


class PipsegError(Exception):
    """A problem with the user's input: a bad file, a missing path, an impossible setting.

    The message is one line that says which file or key, what is wrong and what to do.
    The CLI prints it without a traceback and exits with code 2.
    """
