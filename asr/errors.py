"""The base of every error a user can cause (bad file, bad config, missing tool).

The CLI turns these into one ``error: ...`` line and exit code 2; anything else is a bug
and keeps its traceback.
"""


class AsrError(Exception):
    """Expected, user-caused failure; its message names the file (and line) and the reason."""


class DiskFullError(AsrError):
    """The disk filled up while writing; files written before are intact (they are replaced atomically)."""


def no_space_left(err: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in ``err``'s chain of causes and contexts, if any: torch.save
    reports a full disk as ``RuntimeError: ... unexpected pos`` raised around the OSError."""
    import errno

    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return current
        pending += [current.__cause__, current.__context__]
    return None
