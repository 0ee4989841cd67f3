"""Per-process resource limits that a 10,000-connection burst needs raised."""

import resource


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files (RLIMIT_NOFILE) to its hard limit.

    Each TCP connection is one open file, so 10,000 simultaneous connections need more than the
    common soft default of 1024. Returns the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft
