"""An exclusive lock on a run directory, so two training processes cannot share it."""

import errno
import fcntl
import os

LOCK_FILE = ".lock"


class RunDirectoryBusyError(RuntimeError):
    """Raised when another process holds the lock of a run directory."""


class RunDirectoryLock:
    """Hold `flock` on `<model_dir>/.lock` for the lifetime of a training process.

    The operating system releases the lock when the process ends, even after SIGKILL, so
    a crashed run never leaves a stale lock behind.
    """

    def __init__(self, model_dir):
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._file = None

    def acquire(self):
        stream = open(self.path, "a+")
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            stream.seek(0)
            holder = stream.read().strip() or "unknown"
            stream.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise RunDirectoryBusyError(
                    f"--model_dir={os.path.dirname(self.path)} is in use by another training process "
                    f"(pid {holder}): wait for it to finish, stop it, or choose another --model_dir"
                ) from None
            raise
        stream.seek(0)
        stream.truncate()
        stream.write(f"{os.getpid()}\n")
        stream.flush()
        self._file = stream
        return self

    def release(self):
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()
