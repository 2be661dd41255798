"""Environment for processes that use the messages built by ``scripts/build_msgs.sh``.

Imports neither rclpy nor any message package, so it is usable before either is importable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MSG_PREFIX = REPO_ROOT / "build" / "ros_msgs"


def msg_site_dir(prefix: str | os.PathLike[str]) -> Path:
    """Python site directory of a message prefix built by ``scripts/build_msgs.sh``.

    Args:
        prefix: Install prefix given to ``scripts/build_msgs.sh``.

    Returns:
        ``<prefix>/lib/pythonX.Y/site-packages`` for the running interpreter.
    """
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return Path(prefix).resolve() / "lib" / ver / "site-packages"


def _prepend(value: str, existing: str | None) -> str:
    parts = [value] + [p for p in (existing or "").split(os.pathsep) if p and p != value]
    return os.pathsep.join(parts)


def ros_env(
    prefix: str | os.PathLike[str] = DEFAULT_MSG_PREFIX,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment in which a subprocess finds ``affordance_ros`` and its generated messages.

    The repository root comes first on ``PYTHONPATH`` (the source ``affordance_ros`` merges its
    path with the generated one), then the prefix's site directory; ``<prefix>/lib`` goes on
    ``LD_LIBRARY_PATH`` for the C typesupport libraries, and ``AMENT_PREFIX_PATH`` gains the
    prefix and the interpreter's prefix (for ``ament_index_python``).

    Args:
        prefix: Install prefix given to ``scripts/build_msgs.sh``.
        base: Environment to extend; defaults to a copy of ``os.environ``.

    Returns:
        A new environment mapping; ``base`` is not modified.

    Raises:
        FileNotFoundError: If the prefix holds no generated ``affordance_ros/msg`` package.
    """
    env = dict(os.environ if base is None else base)
    site = msg_site_dir(prefix)
    if not (site / "affordance_ros" / "msg").is_dir():
        raise FileNotFoundError(
            f"no generated affordance_ros messages under {site}; "
            f"build them with: scripts/build_msgs.sh {prefix}"
        )
    root = Path(prefix).resolve()
    env["PYTHONPATH"] = _prepend(str(REPO_ROOT), _prepend(str(site), env.get("PYTHONPATH")))
    env["LD_LIBRARY_PATH"] = _prepend(str(root / "lib"), env.get("LD_LIBRARY_PATH"))
    env["AMENT_PREFIX_PATH"] = _prepend(
        str(root), _prepend(sys.prefix, env.get("AMENT_PREFIX_PATH"))
    )
    # The wheels' bootstrapper re-execs Python once to set LD_LIBRARY_PATH; a child that
    # inherits the "done" flag would skip it and miss the wheels' own library directories.
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    return env


def use_msg_prefix(prefix: str | os.PathLike[str] = DEFAULT_MSG_PREFIX) -> None:
    """Make the generated messages importable in the *running* interpreter.

    ``LD_LIBRARY_PATH`` is read only at process start, so the prefix's shared libraries are
    loaded here by path (later loads then resolve them by soname), and the site directory is
    appended to ``sys.path``. Subprocesses should use :func:`ros_env` instead.

    Args:
        prefix: Install prefix given to ``scripts/build_msgs.sh``.

    Raises:
        FileNotFoundError: If the prefix holds no generated messages.
        OSError: If a library cannot be loaded (e.g. rclpy's libraries are missing).
    """
    import ctypes

    site = msg_site_dir(prefix)
    if not (site / "affordance_ros" / "msg").is_dir():
        raise FileNotFoundError(
            f"no generated affordance_ros messages under {site}; "
            f"build them with: scripts/build_msgs.sh {prefix}"
        )
    if str(site) not in sys.path:
        sys.path.append(str(site))
    import affordance_ros

    if str(site / "affordance_ros") not in affordance_ros.__path__:
        affordance_ros.__path__.append(str(site / "affordance_ros"))
    pending = sorted((Path(prefix).resolve() / "lib").glob("lib*.so"))
    while pending:  # load in dependency order: retry until no library makes progress
        failed = []
        for lib in pending:
            try:
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                failed.append(lib)
        if len(failed) == len(pending):
            ctypes.CDLL(str(failed[0]), mode=ctypes.RTLD_GLOBAL)  # raises with the reason
        pending = failed
