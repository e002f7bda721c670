"""Exceptions of the dataplane package.

The C core returns a negative errno and keeps a message naming the cause
(``dp_last_error``); :func:`check` turns that into one of the classes below.
"""

import errno as _errno


class DataplaneError(Exception):
    """Base class: a failed dataplane operation. ``errno`` is set for C errors."""

    def __init__(self, message, errno=None):
        super().__init__(message)
        self.errno = errno

    def __reduce__(self):  # picklable across processes with its errno
        return (self.__class__, (str(self), self.errno))


class ConfigError(DataplaneError, ValueError):
    """Bad input: a config field, a spec or an argument. Names what is wrong."""


class NotFound(DataplaneError, LookupError):
    """The port, network, entry or object named does not exist."""


class AlreadyExists(DataplaneError):
    """The object to create exists already."""


class Busy(DataplaneError):
    """The object is in use (e.g. a network that still has ports)."""


class ResourceError(DataplaneError):
    """A table, pool or slot array is full, or memory ran out."""


class Unavailable(DataplaneError):
    """Something the request needs (the state store) does not answer now;
    the same request may succeed later. The API answers 503 with
    ``"unavailable": true``, the CNI plugin code 11 (try again later)."""


class Refused(DataplaneError):
    """Something the request needs (the state store) answered and refused
    it: an etcd whose access control does not let this node in (auth
    enabled, a role revoked), or that refuses the request itself. Unlike
    :class:`Unavailable` it fails again until an operator changes that."""


class EALError(DataplaneError):
    """DPDK's environment (EAL) could not be started or is in the wrong state."""


#: errno -> the class for it, for the kernel's errors and the core's alike
BY_ERRNO = {
    _errno.EINVAL: ConfigError,
    _errno.ENOENT: NotFound,
    _errno.ENODEV: NotFound,
    _errno.EEXIST: AlreadyExists,
    _errno.EBUSY: Busy,
    _errno.ENOSPC: ResourceError,
    _errno.ENOMEM: ResourceError,
    _errno.ENOBUFS: ResourceError,
}
# the core answers EALREADY about DPDK's EAL
_CORE_BY_ERRNO = {**BY_ERRNO, _errno.EALREADY: EALError}


def check(ret, lib, ffi, what):
    """Return ``ret`` if non-negative, else raise with the C error text."""
    if ret >= 0:
        return ret
    err = -ret
    msg = ffi.string(lib.dp_last_error()).decode("utf-8", "replace")
    cls = _CORE_BY_ERRNO.get(err, DataplaneError)
    raise cls(f"{what}: {msg}" if msg else f"{what}: {_errno.errorcode.get(err, err)}", err)
